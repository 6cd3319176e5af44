//! What the agents say: reachability and protocol, llama.cpp builds, and a dry run of every
//! process the layout names (flags against that host's build, model files where the arguments
//! say, and where they really are).
//!
//! Here the gathering and the hosts' checks; `builds` the llama.cpp builds; `layout` the layout's
//! processes and URLs; `processes` the dry runs.

mod builds;
mod layout;
mod processes;

use builds::build_label;
pub use builds::{build_command, build_suggestion, HostBuild};

use std::collections::BTreeMap;

use serde_json::json;
use tightwad_protocol::client::Client;
use tightwad_protocol::messages::{AgentStatus, BinaryInfo, ModelArg, ProcessCheck, ProcessKind};

use super::report::{gib, Category, Check, Status};
use crate::cluster::launch::{native_target_args, pool_coordinator_args, rpc_address};
use crate::cluster::layout::{Layout, ProcessRef};
use crate::cluster::{Fleet, HostEntry};

pub struct HostView {
    pub entry: HostEntry,
    pub client: Option<Client>,
    pub status: Result<AgentStatus, String>,
}

pub struct ProcessView {
    pub reference: ProcessRef,
    pub check: Result<ProcessCheck, String>,
}

/// Everything learnt from the agents, gathered once.
pub struct Cluster {
    pub hosts: Vec<HostView>,
    pub processes: BTreeMap<ProcessRef, ProcessView>,
}

impl Cluster {
    pub fn host(&self, name: &str) -> Option<&HostView> {
        self.hosts.iter().find(|h| h.entry.name == name)
    }

    pub fn status(&self, name: &str) -> Option<&AgentStatus> {
        self.host(name).and_then(|h| h.status.as_ref().ok())
    }

    pub fn check(&self, reference: &ProcessRef) -> Option<&ProcessCheck> {
        self.processes
            .get(reference)
            .and_then(|p| p.check.as_ref().ok())
    }

    /// The first model argument (`-m`) of a process, with its GGUF metadata when readable.
    pub fn main_model(&self, reference: &ProcessRef) -> Option<&ModelArg> {
        self.check(reference)?
            .models
            .iter()
            .find(|m| m.flag == "-m" || m.flag == "--model")
    }

    pub fn draft_model(&self, reference: &ProcessRef) -> Option<&ModelArg> {
        self.check(reference)?.models.iter().find(|m| {
            matches!(
                m.flag.as_str(),
                "-md" | "--model-draft" | "--spec-draft-model"
            )
        })
    }

    fn process_status(
        &self,
        reference: &ProcessRef,
    ) -> Option<&tightwad_protocol::messages::ProcessStatus> {
        self.status(&reference.host)?
            .processes
            .iter()
            .find(|p| p.name == reference.process)
    }

    fn rpc_address_of(&self, worker: &ProcessRef) -> Option<String> {
        let host = self.host(&worker.host)?;
        Some(rpc_address(
            &host.entry.address,
            self.process_status(worker),
        ))
    }
}

/// Connects to every host, then dry-runs every process the layout names, with the arguments
/// `tightwad up` would add (pool `--rpc`, native pairing's draft on the remote device).
pub async fn gather(fleet: &Fleet, layout: &Layout) -> Cluster {
    let hosts = futures::future::join_all(fleet.config.hosts.iter().map(|entry| async move {
        match fleet.connect(entry).await {
            Ok(client) => match client.status().await {
                Ok(status) => HostView {
                    entry: entry.clone(),
                    client: Some(client),
                    status: Ok(status),
                },
                Err(e) => HostView {
                    entry: entry.clone(),
                    client: None,
                    status: Err(e.to_string()),
                },
            },
            Err(e) => HostView {
                entry: entry.clone(),
                client: None,
                status: Err(format!("{e:#}")),
            },
        }
    }))
    .await;
    let mut cluster = Cluster {
        hosts,
        processes: BTreeMap::new(),
    };

    // Which processes, and with which arguments.
    let mut planned: BTreeMap<ProcessRef, Option<Vec<String>>> = BTreeMap::new();
    for entry in &layout.processes {
        planned.entry(entry.reference()).or_insert(None);
    }
    for pool in &layout.pools {
        for worker in &pool.workers {
            planned.entry(worker.clone()).or_insert(None);
        }
        let workers: Vec<String> = pool
            .workers
            .iter()
            .filter_map(|w| cluster.rpc_address_of(w))
            .collect();
        let args = cluster
            .process_status(&pool.coordinator)
            .map(|p| pool_coordinator_args(&p.args, &workers));
        planned.insert(pool.coordinator.clone(), args);
    }
    for native in &layout.native_pairings {
        planned.entry(native.draft_worker.clone()).or_insert(None);
        let address = cluster.rpc_address_of(&native.draft_worker);
        let args = match (cluster.process_status(&native.target), address) {
            (Some(p), Some(address)) => Some(native_target_args(&p.args, native, &address, "RPC0")),
            _ => None,
        };
        planned.insert(native.target.clone(), args);
    }

    let checks = futures::future::join_all(planned.into_iter().map(|(reference, args)| {
        let client = cluster
            .host(&reference.host)
            .and_then(|h| h.client.as_ref());
        async move {
            let check = match client {
                None => Err(format!(
                    "host {} is unreachable or not configured",
                    reference.host
                )),
                Some(client) => client
                    .check_process(&reference.process, args)
                    .await
                    .map_err(|e| e.to_string()),
            };
            ProcessView { reference, check }
        }
    }))
    .await;
    for view in checks {
        cluster.processes.insert(view.reference.clone(), view);
    }
    cluster
}

impl Cluster {
    pub fn host_checks(&self) -> Vec<Check> {
        self.hosts
            .iter()
            .map(|host| {
                let subject = host.entry.name.clone();
                match &host.status {
                    Ok(status) => {
                        let inv = &status.inventory;
                        let vram: u64 = inv.gpus.iter().map(|g| g.memory_total_mib).sum();
                        Check::new(
                            Category::Host,
                            subject,
                            Status::Pass,
                            format!(
                                "agent {} (peer protocol v{}) at {}: {} cores, RAM {}, {}",
                                status.software_version,
                                status.protocol_version,
                                host.entry.address,
                                inv.host.cpu_cores,
                                gib(inv.host.ram_total_bytes),
                                if inv.gpus.is_empty() {
                                    "no GPU".to_string()
                                } else {
                                    format!("{} GPU(s), {} VRAM", inv.gpus.len(), gib(vram << 20))
                                }
                            ),
                        )
                        .details(json!({
                            "address": host.entry.address,
                            "software_version": status.software_version,
                            "protocol_version": status.protocol_version,
                        }))
                    }
                    Err(error) => {
                        let hint = if error.contains("incompatible peer protocol") {
                            format!(
                                "install the same Tightwad version on {} as here (tightwad {}, peer protocol v{})",
                                host.entry.name,
                                tightwad_protocol::SOFTWARE_VERSION,
                                tightwad_protocol::PROTOCOL_VERSION
                            )
                        } else if error.contains("not enrolled") {
                            "run `tightwad token` and start the agent with `--join <token>`".into()
                        } else if error.contains("does not match the pinned") {
                            format!("the agent's key changed; if expected, remove {} from the coordinator's pinned peers and enroll it again", host.entry.name)
                        } else {
                            let ip = crate::cluster::layout::host_ip(&host.entry.address);
                            let port = host
                                .entry
                                .address
                                .rsplit_once(':')
                                .and_then(|(_, p)| p.parse::<u16>().ok())
                                .unwrap_or(tightwad_protocol::DEFAULT_AGENT_PORT);
                            format!(
                                "start `tightwad-agent` on {} and check that UDP port {port} on {ip} reaches it from here (address in [[hosts]]: {})",
                                host.entry.name, host.entry.address
                            )
                        };
                        Check::new(
                            Category::Host,
                            subject,
                            Status::Fail,
                            format!("{}: {error}", failure_kind(error)),
                        )
                        .hint(hint)
                        .details(json!({ "address": host.entry.address, "error": error }))
                    }
                }
            })
            .collect()
    }
}

/// What kind of failure a connection error is, in one word for the report line.
fn failure_kind(error: &str) -> &'static str {
    if error.contains("incompatible peer protocol") {
        "incompatible agent"
    } else if error.contains("not enrolled")
        || error.contains("enrollment refused")
        || error.contains("does not match the pinned")
    {
        "not trusted"
    } else {
        "unreachable"
    }
}
