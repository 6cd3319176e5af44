//! A cluster of enrolled agents, one per network namespace, with the coordinator config that
//! names them: what the doctor, pool and native pairing tests start from.

use std::path::PathBuf;

use tightwad_coordinator::fleet;

use crate::agents::{
    coordinator_config, fleet_for, issue_token, stock_models, AgentProcess, AgentSpec,
};
use crate::cgroup::MemoryCgroup;
use crate::netns::{Lab, Namespace};
use crate::test_env::runtime;

/// One host of a test cluster: its namespace, its agent (stopped on drop) and its model folder.
pub struct TestHost {
    pub name: String,
    pub ns: Namespace,
    pub agent: AgentProcess,
    pub models: PathBuf,
}

pub struct HostPlan<'a> {
    pub name: &'a str,
    pub models: &'a [&'a str],
    /// `[[process]]` tables and other agent TOML; `{models}` is replaced by the model folder.
    pub agent_toml: &'a str,
    /// `[binaries]` replacement (llama-server, rpc-server), e.g. another real llama.cpp build.
    pub binaries: Option<(PathBuf, PathBuf)>,
}

pub struct TestCluster {
    pub lab: Lab,
    pub hosts: Vec<TestHost>,
    pub config: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl TestCluster {
    /// Starts one enrolled agent per plan and writes the coordinator config: `[[hosts]]` plus
    /// `layout` (`{ip:NAME}` and `{models:NAME}` are replaced by that host's address and folder).
    pub fn start(plans: &[HostPlan<'_>], layout: &str) -> TestCluster {
        let rt = runtime();
        let _guard = rt.enter();
        let mut lab = Lab::new();
        let namespaces: Vec<Namespace> = plans.iter().map(|_| lab.add_namespace()).collect();
        let host_list: Vec<(String, String)> = plans
            .iter()
            .zip(&namespaces)
            .map(|(p, ns)| (p.name.to_string(), format!("{}:7420", ns.ip)))
            .collect();
        let refs: Vec<(&str, &str)> = host_list
            .iter()
            .map(|(n, a)| (n.as_str(), a.as_str()))
            .collect();
        let config = coordinator_config(lab.dir.path(), &lab.path("coordinator"), &refs);
        let fleet = fleet_for(&config);
        let mut hosts = Vec::new();
        for (plan, ns) in plans.iter().zip(namespaces) {
            let models = lab.path(&format!("models-{}", plan.name));
            stock_models(&models, plan.models);
            let toml = plan
                .agent_toml
                .replace("{models}", &models.display().to_string());
            let spec = AgentSpec {
                ns: &ns,
                state_dir: lab.path(&format!("agent-{}", plan.name)),
                models: models.clone(),
                join: Some(issue_token(&fleet)),
                extra_toml: toml,
            };
            let agent = match &plan.binaries {
                Some((llama, rpc)) => AgentProcess::start_with_binaries(
                    spec,
                    &llama.display().to_string(),
                    &rpc.display().to_string(),
                ),
                None => AgentProcess::start(spec),
            };
            hosts.push(TestHost {
                name: plan.name.to_string(),
                ns,
                agent,
                models,
            });
        }
        // Enroll every agent now (uses up the tokens), so later runs go by the pins alone.
        // (An agent that refuses us, on purpose in a test, stays unenrolled.)
        for host in &fleet.config.hosts {
            if let Err(e) = rt.block_on(fleet.connect(host)) {
                eprintln!("not enrolled: {e:#}");
            }
        }
        let mut layout = layout.to_string();
        for host in &hosts {
            layout = layout
                .replace(&format!("{{ip:{}}}", host.name), &host.ns.ip)
                .replace(
                    &format!("{{models:{}}}", host.name),
                    &host.models.display().to_string(),
                );
        }
        let mut text = std::fs::read_to_string(&config).expect("config");
        text.push_str(&layout);
        std::fs::write(&config, text).expect("write config");
        drop(_guard);
        TestCluster {
            lab,
            hosts,
            config,
            rt,
        }
    }

    pub fn fleet(&self) -> fleet::Fleet {
        let _runtime = self.rt.enter();
        fleet_for(&self.config)
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Puts `host`'s agent (and every server it starts from now on) in a new cgroup limited to
    /// `limit_bytes`: a host that small, for real. The limit holds while the guard lives.
    pub fn limit_memory(&self, host: &str, limit_bytes: u64) -> MemoryCgroup {
        let pid = self
            .host(host)
            .agent
            .child
            .as_ref()
            .map(|c| c.id())
            .unwrap_or_else(|| panic!("{host}'s agent is not running"));
        let cgroup = MemoryCgroup::create(&format!("tightwad-test-{host}"), limit_bytes);
        cgroup.add(pid);
        cgroup
    }

    /// Starts a configured process through its agent and waits until it is ready.
    pub fn start_process(&self, host: &str, process: &str) {
        let fleet = self.fleet();
        let entry = fleet.config.host(host).expect("host").clone();
        self.rt.block_on(async {
            let client = fleet.connect(&entry).await.expect("connect");
            client
                .start_process(process, None)
                .await
                .unwrap_or_else(|e| panic!("starting {host}/{process}: {e}"));
        });
    }
}

pub fn llama_args(model: &str, port: u16, extra: &str) -> String {
    format!(
        r#"["-m", "{model}", "--host", "0.0.0.0", "--port", "{port}", "-c", "1024", "-t", "1", "--cache-ram", "0"{extra}]"#
    )
}
