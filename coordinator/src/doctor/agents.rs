//! What the agents say: reachability and protocol, llama.cpp builds, and a dry run of every
//! process the layout names (flags against that host's build, model files where the arguments
//! say, and where they really are).

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

fn build_label(info: &BinaryInfo) -> Option<String> {
    let b = info.build.as_ref()?;
    let number = b
        .build_number
        .map(|n| format!("b{n}"))
        .unwrap_or_else(|| "b?".into());
    Some(match (&b.version, &b.commit) {
        (Some(v), Some(c)) => format!("{v} {number}-{c}"),
        (None, Some(c)) => format!("{number}-{c}"),
        (Some(v), None) => format!("{v} {number}"),
        (None, None) => number,
    })
}

/// The `tightwad build` command that makes these hosts agree: the newest release tag among
/// their builds (`b8111`), or a placeholder where none looks like one.
pub fn build_command<'a>(builds: impl Iterator<Item = &'a HostBuild>) -> String {
    let newest = builds
        .filter_map(|b| b.llama.as_deref())
        .flat_map(|label| label.split_whitespace())
        .filter_map(|word| {
            word.strip_prefix('b')?
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()
        })
        // llama.cpp's release tags are b<build number>; a package's own build 1 is not one.
        .filter(|n| *n >= 1000)
        .max();
    build_suggestion(newest.map(|n| format!("b{n}")).as_deref())
}

/// A host's llama.cpp build and rpc-server protocol, as its agent reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBuild {
    pub llama: Option<String>,
    pub rpc_protocol: Option<String>,
    /// The GPU backend, where the agent knows it (builds made by `tightwad build`). Shown, not
    /// compared: a CUDA host and a CPU host of one pool run one build with two backends.
    pub backend: Option<String>,
}

impl HostBuild {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.llama {
            match &self.backend {
                Some(b) => parts.push(format!("llama.cpp {l} ({b})")),
                None => parts.push(format!("llama.cpp {l}")),
            }
        }
        if let Some(r) = &self.rpc_protocol {
            parts.push(format!("RPC protocol v{r}"));
        }
        if parts.is_empty() {
            "no llama.cpp binary found".into()
        } else {
            parts.join(", ")
        }
    }
}

impl Cluster {
    pub fn build_of(&self, host: &str) -> Option<HostBuild> {
        let status = self.status(host)?;
        let find = |kind| status.inventory.binaries.iter().find(|b| b.kind == kind);
        Some(HostBuild {
            llama: find(ProcessKind::LlamaServer).and_then(build_label),
            rpc_protocol: find(ProcessKind::RpcServer).and_then(|b| b.rpc_protocol.clone()),
            backend: find(ProcessKind::LlamaServer)
                .and_then(|b| b.build.as_ref())
                .and_then(|b| b.backend)
                .map(|b| b.to_string()),
        })
    }

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

    /// The layout against the agents: every named process exists with the right kind, and each
    /// pairing's URL points at the host and port its process listens on.
    pub fn layout_checks(&self, layout: &Layout) -> Vec<Check> {
        use crate::cluster::layout::{host_ip, Role};
        let mut checks = Vec::new();
        let kind_of = |r: &ProcessRef| self.check(r).map(|c| c.kind);
        let mut expect_kind = |r: &ProcessRef, want: ProcessKind, part: &str| {
            if let Some(kind) = kind_of(r) {
                if kind != want {
                    checks.push(
                        Check::new(
                            Category::Layout,
                            r.to_string(),
                            Status::Fail,
                            format!("{part} must be {}, but {r} is {}", a(want), a(kind)),
                        )
                        .hint(format!(
                            "name {} process of {} in the layout",
                            a(want),
                            r.host
                        )),
                    );
                }
            }
        };
        for pool in &layout.pools {
            expect_kind(
                &pool.coordinator,
                ProcessKind::LlamaServer,
                "a pool coordinator",
            );
            for w in &pool.workers {
                expect_kind(w, ProcessKind::RpcServer, "a pool worker");
            }
        }
        for native in &layout.native_pairings {
            expect_kind(
                &native.target,
                ProcessKind::LlamaServer,
                "a native pairing's target",
            );
            expect_kind(
                &native.draft_worker,
                ProcessKind::RpcServer,
                "a native pairing's draft worker",
            );
        }
        for (index, pairing) in layout.pairings.iter().enumerate() {
            let name = pairing.display_name(index);
            for (role, url) in [
                (Role::Target, Some(pairing.target.as_str())),
                (Role::Draft, pairing.draft.as_deref()),
            ] {
                let (Some(url), Some(reference)) = (url, layout.process_for(&name, role)) else {
                    continue;
                };
                let (Some(host), Some(process)) =
                    (self.host(&reference.host), self.process_status(&reference))
                else {
                    continue;
                };
                let authority = url
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .unwrap_or(url)
                    .split('/')
                    .next()
                    .unwrap_or("");
                let (url_host, url_port) = match authority.rsplit_once(':') {
                    Some((h, p)) => (h, p.parse::<u16>().ok()),
                    None => (authority, Some(80)),
                };
                let agent_host = host_ip(&host.entry.address);
                let mut problems = Vec::new();
                if url_port.is_some() && url_port != process.port {
                    problems.push(format!(
                        "{reference} listens on port {}",
                        process
                            .port
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "?".into())
                    ));
                }
                let local = matches!(url_host, "127.0.0.1" | "localhost");
                if url_host != agent_host
                    && !local
                    && agent_host.parse::<std::net::IpAddr>().is_ok()
                    && url_host.parse::<std::net::IpAddr>().is_ok()
                {
                    problems.push(format!("{} is at {agent_host}", reference.host));
                }
                let subject = format!("pairing {name}");
                if problems.is_empty() {
                    checks.push(Check::new(
                        Category::Layout,
                        subject,
                        Status::Pass,
                        format!("{} URL {url} is {reference}", role_name(role)),
                    ));
                } else {
                    checks.push(
                        Check::new(
                            Category::Layout,
                            subject,
                            Status::Fail,
                            format!(
                                "{} URL {url} does not match: {}",
                                role_name(role),
                                problems.join("; ")
                            ),
                        )
                        .hint(format!(
                            "fix the {} URL in [[pairings]] or the --port of {reference}",
                            role_name(role)
                        )),
                    );
                }
            }
        }
        checks
    }

    /// Builds that must match (pool members, native pairing's two hosts) are failures when they
    /// differ; draft and target on different builds only a warning (HTTP does not care, ties may).
    pub fn build_checks(&self, layout: &Layout) -> Vec<Check> {
        let mut checks = Vec::new();
        let mut must_match = |subject: String, hosts: Vec<&str>, why: &str| {
            let builds: Vec<(&str, HostBuild)> = hosts
                .iter()
                .filter_map(|h| self.build_of(h).map(|b| (*h, b)))
                .collect();
            if builds.len() < hosts.len() {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Skip,
                        "some hosts are unreachable",
                    )
                    .hint("fix the host checks above first"),
                );
                return;
            }
            let differs = |f: fn(&HostBuild) -> Option<String>| {
                let known: Vec<String> = builds.iter().filter_map(|(_, b)| f(b)).collect();
                known.windows(2).any(|w| w[0] != w[1])
            };
            let listing = builds
                .iter()
                .map(|(h, b)| format!("{h}: {}", b.describe()))
                .collect::<Vec<_>>()
                .join("; ");
            let details = json!(builds
                .iter()
                .map(|(h, b)| json!({"host": h, "llama_build": b.llama, "rpc_protocol": b.rpc_protocol}))
                .collect::<Vec<_>>());
            if differs(|b| b.llama.clone()) || differs(|b| b.rpc_protocol.clone()) {
                let reference = builds
                    .iter()
                    .find_map(|(h, b)| b.llama.clone().map(|l| format!("{l} (as on {h})")))
                    .unwrap_or_else(|| "one build".into());
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Fail,
                        format!("llama.cpp builds differ ({why}): {listing}"),
                    )
                    .hint(format!(
                        "build the same llama.cpp on every one of these hosts (e.g. {reference}) in one command: {}",
                        build_command(builds.iter().map(|(_, b)| b))
                    ))
                    .details(details),
                );
            } else {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Pass,
                        format!("same build: {listing}"),
                    )
                    .details(details),
                );
            }
        };
        for pool in &layout.pools {
            let mut hosts = vec![pool.coordinator.host.as_str()];
            hosts.extend(pool.workers.iter().map(|w| w.host.as_str()));
            must_match(
                format!("pool {}", pool.name),
                hosts,
                "RPC workers and their coordinator must speak the same RPC protocol",
            );
        }
        for native in &layout.native_pairings {
            must_match(
                format!("native {}", native.name),
                vec![native.target.host.as_str(), native.draft_worker.host.as_str()],
                "the draft's rpc-server and the target's llama-server must speak the same RPC protocol",
            );
        }
        for (index, pairing) in layout.pairings.iter().enumerate() {
            let name = pairing.display_name(index);
            let (Some(t), Some(d)) = (
                layout.process_for(&name, crate::cluster::layout::Role::Target),
                layout.process_for(&name, crate::cluster::layout::Role::Draft),
            ) else {
                continue;
            };
            let (Some(tb), Some(db)) = (self.build_of(&t.host), self.build_of(&d.host)) else {
                continue;
            };
            let subject = format!("pairing {name}");
            if tb.llama != db.llama {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Warn,
                        format!(
                            "draft and target run different llama.cpp builds: {} {}; {} {}",
                            t.host,
                            tb.describe(),
                            d.host,
                            db.describe()
                        ),
                    )
                    .hint(format!("works over HTTP, but one build everywhere avoids surprises (and native pairing requires it): {}", build_command([&tb, &db].into_iter()))),
                );
            } else {
                checks.push(Check::new(
                    Category::Build,
                    subject,
                    Status::Pass,
                    format!("draft and target on the same build ({})", tb.describe()),
                ));
            }
        }
        if checks.is_empty() {
            // No layout: at least say whether the hosts agree (the field report had three builds).
            let builds: Vec<(String, HostBuild)> = self
                .hosts
                .iter()
                .filter_map(|h| {
                    self.build_of(&h.entry.name)
                        .map(|b| (h.entry.name.clone(), b))
                })
                .collect();
            let distinct: std::collections::BTreeSet<_> =
                builds.iter().filter_map(|(_, b)| b.llama.clone()).collect();
            let listing = builds
                .iter()
                .map(|(h, b)| format!("{h}: {}", b.describe()))
                .collect::<Vec<_>>()
                .join("; ");
            if distinct.len() > 1 {
                checks.push(
                    Check::new(
                        Category::Build,
                        "all hosts",
                        Status::Warn,
                        format!("hosts run different llama.cpp builds: {listing}"),
                    )
                    .hint(format!(
                        "RPC pools and native pairing need one build on every host involved: {}",
                        build_command(builds.iter().map(|(_, b)| b))
                    )),
                );
            } else if !builds.is_empty() {
                checks.push(Check::new(
                    Category::Build,
                    "all hosts",
                    Status::Pass,
                    format!("one build: {listing}"),
                ));
            }
        }
        checks
    }

    /// Flags and model files of every process the layout names.
    pub async fn process_checks(&self, fleet: &Fleet) -> Vec<Check> {
        let mut checks = Vec::new();
        for (reference, view) in &self.processes {
            let subject = reference.to_string();
            let check = match &view.check {
                Ok(check) => check,
                Err(error) => {
                    let (status, hint) = if error.contains("unreachable") {
                        (Status::Skip, "fix the host check above first".to_string())
                    } else {
                        (
                            Status::Fail,
                            format!(
                                "add a [[process]] named {:?} to the agent config on {}, or fix the name in the coordinator's layout",
                                reference.process, reference.host
                            ),
                        )
                    };
                    checks.push(
                        Check::new(
                            Category::Flags,
                            subject,
                            status,
                            format!("cannot check: {error}"),
                        )
                        .hint(hint),
                    );
                    continue;
                }
            };
            for model in &check.models {
                checks.push(self.model_check(fleet, reference, model).await);
            }
            match &check.flag_error {
                None => checks.push(
                    Check::new(
                        Category::Flags,
                        subject.clone(),
                        Status::Pass,
                        format!(
                            "{} accepts every flag ({})",
                            check.kind,
                            check
                                .binary
                                .as_ref()
                                .and_then(|b| {
                                    build_label(b).or_else(|| {
                                        b.rpc_protocol.as_ref().map(|v| format!("RPC protocol v{v}"))
                                    })
                                })
                                .unwrap_or_else(|| "this host's build".into())
                        ),
                    )
                    .details(json!({ "args": check.args })),
                ),
                Some(error) => checks.push(
                    Check::new(Category::Flags, subject.clone(), Status::Fail, error.clone())
                        .hint(format!(
                            "fix the args of [[process]] {:?} in {}'s agent config: flags change between llama.cpp builds, and this host's build is the one that counts",
                            reference.process, reference.host
                        ))
                        .details(json!({ "args": check.args })),
                ),
            }
        }
        checks
    }

    async fn model_check(&self, fleet: &Fleet, reference: &ProcessRef, model: &ModelArg) -> Check {
        let subject = reference.to_string();
        let details = json!({
            "flag": model.flag, "path": model.path, "exists": model.exists,
            "size_bytes": model.size_bytes, "found_elsewhere": model.found_elsewhere,
        });
        if model.exists {
            return match (&model.gguf, &model.error) {
                (Some(g), _) => Check::new(
                    Category::Model,
                    subject,
                    Status::Pass,
                    format!(
                        "{} {} ({}, {}, {} params{})",
                        model.flag,
                        model.path,
                        gib(model.size_bytes),
                        g.file_type.as_deref().unwrap_or("?"),
                        crate::doctor::memory::params(g.parameter_count),
                        g.expert_count
                            .filter(|e| *e > 1)
                            .map(|e| format!(", MoE {e} experts"))
                            .unwrap_or_default()
                    ),
                )
                .details(details),
                (None, error) => Check::new(
                    Category::Model,
                    subject,
                    Status::Fail,
                    format!(
                        "{} {}: not a readable GGUF model ({})",
                        model.flag,
                        model.path,
                        error.as_deref().unwrap_or("unknown format")
                    ),
                )
                .hint("the file is damaged or not a model: copy it again (`tightwad models copy` verifies checksums)")
                .details(details),
            };
        }
        let file_name = std::path::Path::new(&model.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.path.clone());
        let hint = if let Some(there) = model.found_elsewhere.first() {
            format!(
                "{file_name} is at {there} on {}: change {} to that path in [[process]] {:?} of its agent config (or move the file)",
                reference.host, model.flag, reference.process
            )
        } else {
            let mut elsewhere = None;
            for host in &self.hosts {
                if host.entry.name == reference.host {
                    continue;
                }
                if let Some(client) = &host.client {
                    if let Ok(found) = client.find_model(&file_name).await {
                        if let Some(m) = found.first() {
                            elsewhere = Some((host.entry.name.clone(), m.path.clone()));
                            break;
                        }
                    }
                }
            }
            let _ = fleet;
            match elsewhere {
                Some((host, path)) => format!(
                    "{host} has it at {path}: `tightwad models copy {file_name} --from {host} --to {}`, then point {} at the copy",
                    reference.host, model.flag
                ),
                None => format!(
                    "no host has {file_name}: put it in one of {}'s model folders and point {} at it",
                    reference.host, model.flag
                ),
            }
        };
        Check::new(
            Category::Model,
            subject,
            Status::Fail,
            format!(
                "{} {}: no such file on {}",
                model.flag, model.path, reference.host
            ),
        )
        .hint(hint)
        .details(details)
    }
}

fn role_name(role: crate::cluster::layout::Role) -> &'static str {
    match role {
        crate::cluster::layout::Role::Target => "target",
        crate::cluster::layout::Role::Draft => "draft",
    }
}

/// "a llama-server", "an rpc-server".
fn a(kind: ProcessKind) -> String {
    match kind {
        ProcessKind::RpcServer => format!("an {kind}"),
        _ => format!("a {kind}"),
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

/// Used by `tightwad doctor`'s hint: the command that makes the hosts agree.
pub fn build_suggestion(reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!(
            "tightwad build --ref {r} (or --source llama.cpp.tar.gz for hosts without internet)"
        ),
        None => {
            "tightwad build --ref REF (or --source llama.cpp.tar.gz for hosts without internet)"
                .into()
        }
    }
}

#[cfg(test)]
mod build_command_tests {
    use super::*;

    #[test]
    fn suggests_the_newest_release_tag() {
        let host = |l: &str| HostBuild {
            llama: Some(l.into()),
            rpc_protocol: None,
            backend: None,
        };
        let builds = [
            host("b8112-aaa"),
            host("b8079-bbb"),
            host("0.5.0-dev b1-ccc"),
        ];
        let text = build_command(builds.iter());
        assert!(text.contains("tightwad build --ref b8112"), "{text}");
        let text = build_command([host("0.5.0-dev b1-ccc")].iter());
        assert!(text.contains("tightwad build --ref REF"), "{text}");
    }
}
