//! A cluster of enrolled agents, one per network namespace, with the coordinator config that
//! names them: what the doctor, pool, native pairing and other fleet tests start from. A test
//! says its cluster with [`ClusterPlan`] (hosts, their models and processes, the layout) and
//! starts it; [`TestCluster`] is the running one.

use std::path::PathBuf;
use std::process::{Command, Output};

use tightwad_coordinator::{doctor, fleet};

use crate::agents::{
    coordinator_config, fleet_for, issue_token, stock_models, AgentProcess, AgentSpec,
};
use crate::cgroup::MemoryCgroup;
use crate::netns::{Lab, Namespace};
use crate::test_env::{runtime, workspace_binary};

/// One host of a test cluster: its namespace, its agent (stopped on drop) and its model folder.
pub struct TestHost {
    pub name: String,
    pub ns: Namespace,
    pub agent: AgentProcess,
    pub models: PathBuf,
}

/// A cluster to start, said host by host the way a user sets one up: which models each host has,
/// what its agent runs, and the coordinator's layout over them. [`ClusterPlan::start`] makes it
/// real.
///
/// ```ignore
/// let cluster = ClusterPlan::new()
///     .host("alpha").models(&["target.gguf"]).llama_server("target", "{models}/target.gguf", 8080, "")
///     .host("beta").rpc_server("rpc", 50052)
///     .pool("big", "alpha/target", &["beta/rpc"])
///     .start();
/// ```
#[derive(Default)]
pub struct ClusterPlan {
    hosts: Vec<HostPlan>,
    /// The host the calls after [`ClusterPlan::host`] are about.
    current: usize,
    layout: String,
}

/// One host of a [`ClusterPlan`].
struct HostPlan {
    name: String,
    models: Vec<String>,
    /// `[[process]]` tables and other agent TOML; `{models}` is replaced by the model folder.
    agent_toml: String,
    /// `[binaries]` replacement (llama-server, rpc-server), e.g. another real llama.cpp build.
    binaries: Option<(PathBuf, PathBuf)>,
}

impl ClusterPlan {
    pub fn new() -> ClusterPlan {
        ClusterPlan::default()
    }

    /// The two hosts of an RPC pool or a native pairing (the layout says which): alpha runs
    /// `target`, a llama-server on port 8080 over `model` (`target_extra`: more flags, as
    /// [`llama_args`] takes them); beta runs `rpc`, an rpc-server on port 50052.
    pub fn target_and_rpc_worker(model: &str, target_extra: &str) -> ClusterPlan {
        ClusterPlan::new()
            .host("alpha")
            .llama_server("target", model, 8080, target_extra)
            .host("beta")
            .rpc_server("rpc", 50052)
    }

    /// Native pairing the way a user deploys it: alpha holds the target and draft models and
    /// runs `target`; `tightwad up native` restarts it with the draft model on beta's
    /// rpc-server; the proxy's pairing `native` fronts the target with `native = true`
    /// (`proxy_settings`: more keys of that pairing, one a line).
    pub fn native_pairing(target_extra: &str, proxy_settings: &str) -> ClusterPlan {
        ClusterPlan::target_and_rpc_worker("{models}/target.gguf", target_extra)
            .host("alpha")
            .models(&["target.gguf", "draft.gguf"])
            .layout(&format!(
                r#"
[[native_pairings]]
name = "native"
target = "alpha/target"
draft_worker = "beta/rpc"
draft_model = "{{models:alpha}}/draft.gguf"
draft_tokens = 4

[[pairings]]
name = "native"
target = "http://{{ip:alpha}}:8080"
native = true
draft_tokens = 4
{proxy_settings}"#
            ))
    }

    /// Adds the host `name` (or goes back to it): the calls that follow are about it.
    pub fn host(mut self, name: &str) -> ClusterPlan {
        self.current = match self.hosts.iter().position(|h| h.name == name) {
            Some(index) => index,
            None => {
                self.hosts.push(HostPlan {
                    name: name.to_string(),
                    models: Vec::new(),
                    agent_toml: String::new(),
                    binaries: None,
                });
                self.hosts.len() - 1
            }
        };
        self
    }

    fn current(&mut self) -> &mut HostPlan {
        self.hosts
            .get_mut(self.current)
            .expect("ClusterPlan: name a host first")
    }

    /// Model files (from `TIGHTWAD_MODELS`) in the host's model folder.
    pub fn models(mut self, names: &[&str]) -> ClusterPlan {
        self.current()
            .models
            .extend(names.iter().map(|n| n.to_string()));
        self
    }

    /// A configured llama-server `process` on `port` over `model` (`{models}`: the host's model
    /// folder; `extra`: more arguments, as [`llama_args`] takes them).
    pub fn llama_server(self, process: &str, model: &str, port: u16, extra: &str) -> ClusterPlan {
        self.agent_toml(&format!(
            "[[process]]\nname = \"{process}\"\nkind = \"llama-server\"\nargs = {}\n",
            llama_args(model, port, extra)
        ))
    }

    /// A configured rpc-server `process` listening on every address at `port`.
    pub fn rpc_server(self, process: &str, port: u16) -> ClusterPlan {
        self.agent_toml(&format!(
            "[[process]]\nname = \"{process}\"\nkind = \"rpc-server\"\nargs = [\"-H\", \"0.0.0.0\", \"-p\", \"{port}\"]\n"
        ))
    }

    /// Any other agent TOML (`[peer]`, `[build]`, …), appended to what the host has.
    pub fn agent_toml(mut self, toml: &str) -> ClusterPlan {
        self.current().agent_toml.push_str(toml);
        self
    }

    /// The host's agent supervises these llama-server and rpc-server executables (e.g. another
    /// real llama.cpp build) instead of `LLAMA_SERVER` and `RPC_SERVER`.
    pub fn binaries(mut self, llama_server: PathBuf, rpc_server: PathBuf) -> ClusterPlan {
        self.current().binaries = Some((llama_server, rpc_server));
        self
    }

    /// Coordinator layout TOML (`{ip:NAME}` and `{models:NAME}` are replaced by that host's
    /// address and model folder).
    pub fn layout(mut self, toml: &str) -> ClusterPlan {
        self.layout.push_str(toml);
        self
    }

    /// An RPC pool: `coordinator`'s llama-server runs its model over the `workers`' rpc-servers
    /// (`HOST/PROCESS` each).
    pub fn pool(self, name: &str, coordinator: &str, workers: &[&str]) -> ClusterPlan {
        let workers: Vec<String> = workers.iter().map(|w| format!("\"{w}\"")).collect();
        self.layout(&format!(
            "\n[[pools]]\nname = \"{name}\"\ncoordinator = \"{coordinator}\"\nworkers = [{}]\n",
            workers.join(", ")
        ))
    }

    /// `host`'s `process` plays `role` (`target`, `draft`) in the layout.
    pub fn role(self, host: &str, process: &str, role: &str) -> ClusterPlan {
        self.layout(&format!(
            "\n[[processes]]\nhost = \"{host}\"\nprocess = \"{process}\"\nrole = \"{role}\"\n"
        ))
    }

    /// Starts one enrolled agent per host and writes the coordinator config: `[[hosts]]` plus
    /// the layout.
    pub fn start(self) -> TestCluster {
        TestCluster::start(&self.hosts, &self.layout)
    }
}

/// A started [`ClusterPlan`]: the lab its hosts live in, the hosts, and the coordinator config.
pub struct TestCluster {
    pub lab: Lab,
    pub hosts: Vec<TestHost>,
    pub config: PathBuf,
    pub rt: tokio::runtime::Runtime,
}

impl TestCluster {
    /// Starts one enrolled agent per plan and writes the coordinator config: `[[hosts]]` plus
    /// `layout` (`{ip:NAME}` and `{models:NAME}` are replaced by that host's address and folder).
    fn start(plans: &[HostPlan], layout: &str) -> TestCluster {
        let rt = runtime();
        let _guard = rt.enter();
        let mut lab = Lab::new();
        let namespaces: Vec<Namespace> = plans.iter().map(|_| lab.add_namespace()).collect();
        let host_list: Vec<(String, String)> = plans
            .iter()
            .zip(&namespaces)
            .map(|(p, ns)| (p.name.clone(), format!("{}:7420", ns.ip)))
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
            let names: Vec<&str> = plan.models.iter().map(String::as_str).collect();
            stock_models(&models, &names);
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
                name: plan.name.clone(),
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

    /// `host`'s agent status as the coordinator reads it (its processes, its inventory).
    pub fn agent_status(&self, host: &str) -> tightwad_protocol::messages::AgentStatus {
        let fleet = self.fleet();
        let entry = fleet.config.host(host).expect("host").clone();
        self.rt.block_on(async {
            fleet
                .connect(&entry)
                .await
                .expect("connect")
                .status()
                .await
                .expect("status")
        })
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

    /// `tightwad doctor` on the cluster's config (`offline`: without the live probes), its report
    /// printed for the test log.
    pub fn doctor(&self, offline: bool) -> doctor::Report {
        let args = doctor::DoctorArgs {
            json: false,
            offline,
        };
        let report = self
            .rt
            .block_on(doctor::diagnose(&args, &self.config))
            .expect("doctor runs");
        eprintln!("{}", report.render());
        report
    }

    /// `tightwad -c CONFIG ARGS…`: the binary, run against this cluster as a user runs it.
    pub fn tightwad(&self, args: &[&str]) -> Output {
        Command::new(workspace_binary("tightwad", "TIGHTWAD_BIN"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("tightwad runs")
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
