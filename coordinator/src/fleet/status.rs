//! `tightwad status` and `tightwad models list`: ask every host at once, then render a table for
//! people or JSON for scripts.

use crate::cluster::config::HostEntry;
use crate::cluster::session::Fleet;
use serde::Serialize;
use std::fmt::Write;
use tightwad_protocol::client::Client;
use tightwad_protocol::messages::{AgentStatus, ModelFile};
use tightwad_protocol::ProtocolError;

#[derive(Debug, Serialize)]
pub struct HostReport {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    pub fingerprint: Option<String>,
    pub error: Option<String>,
    pub status: Option<AgentStatus>,
    /// Predicted vs measured memory of each running llama-server (agents that answer it).
    #[serde(default)]
    pub memory: Vec<tightwad_protocol::messages::ProcessMemory>,
}

#[derive(Debug, Serialize)]
pub struct HostModels {
    pub name: String,
    pub error: Option<String>,
    pub models: Vec<ModelFile>,
}

fn selected<'a>(fleet: &'a Fleet, only: Option<&str>) -> anyhow::Result<Vec<&'a HostEntry>> {
    match only {
        Some(name) => Ok(vec![fleet.config.host(name)?]),
        None => {
            anyhow::ensure!(!fleet.config.hosts.is_empty(), "no [[hosts]] in the config");
            Ok(fleet.config.hosts.iter().collect())
        }
    }
}

/// Every selected host's status, in config order; unreachable hosts carry their error.
pub async fn collect(fleet: &Fleet, only: Option<&str>) -> anyhow::Result<Vec<HostReport>> {
    let hosts = selected(fleet, only)?;
    let reports = futures::future::join_all(hosts.into_iter().map(|host| async move {
        let result = async {
            let client = fleet.connect(host).await?;
            let status = client.status().await?;
            let mut memory = Vec::new();
            for p in &status.processes {
                if p.kind == tightwad_protocol::messages::ProcessKind::LlamaServer
                    && p.state == tightwad_protocol::messages::ProcessState::Ready
                {
                    // An agent of an older release does not know the request: no memory line.
                    if let Ok(m) = client.process_memory(&p.name).await {
                        memory.push(m);
                    }
                }
            }
            anyhow::Ok((client.peer_fingerprint().to_string(), status, memory))
        }
        .await;
        match result {
            Ok((fingerprint, status, memory)) => HostReport {
                name: host.name.clone(),
                address: host.address.clone(),
                reachable: true,
                fingerprint: Some(fingerprint),
                error: None,
                status: Some(status),
                memory,
            },
            Err(e) => HostReport {
                name: host.name.clone(),
                address: host.address.clone(),
                reachable: false,
                fingerprint: None,
                error: Some(format!("{e:#}")),
                status: None,
                memory: Vec::new(),
            },
        }
    }))
    .await;
    Ok(reports)
}

pub async fn collect_models(fleet: &Fleet, only: Option<&str>) -> anyhow::Result<Vec<HostModels>> {
    models_on(
        fleet,
        only,
        |client| async move { client.list_models().await },
    )
    .await
}

/// Every host's copies of `file` (any of its model folders).
pub async fn find_model(fleet: &Fleet, file: &str) -> anyhow::Result<Vec<HostModels>> {
    models_on(fleet, None, |client| async move {
        client.find_model(file).await
    })
    .await
}

/// Asks every selected host for model files (`ask`, on a connection to it) at once, in config
/// order; a host that cannot answer carries its error and no files.
async fn models_on<F, Fut>(
    fleet: &Fleet,
    only: Option<&str>,
    ask: F,
) -> anyhow::Result<Vec<HostModels>>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<ModelFile>, ProtocolError>>,
{
    let hosts = selected(fleet, only)?;
    let ask = &ask;
    Ok(
        futures::future::join_all(hosts.into_iter().map(|host| async move {
            let result = async {
                let client = fleet.connect(host).await?;
                anyhow::Ok(ask(client).await?)
            }
            .await;
            match result {
                Ok(models) => HostModels {
                    name: host.name.clone(),
                    error: None,
                    models,
                },
                Err(e) => HostModels {
                    name: host.name.clone(),
                    error: Some(format!("{e:#}")),
                    models: Vec::new(),
                },
            }
        }))
        .await,
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

pub fn render(reports: &[HostReport]) -> String {
    let mut out = String::new();
    for report in reports {
        let Some(status) = &report.status else {
            let _ = writeln!(
                out,
                "{} ({}): UNREACHABLE: {}\n",
                report.name,
                report.address,
                report.error.as_deref().unwrap_or("?")
            );
            continue;
        };
        let inv = &status.inventory;
        let _ = writeln!(
            out,
            "{} ({}): up {}s, agent {} (protocol v{}), {} cores, RAM {} free of {}",
            report.name,
            report.address,
            status.uptime_secs,
            status.software_version,
            status.protocol_version,
            inv.host.cpu_cores,
            gib(inv.host.ram_available_bytes),
            gib(inv.host.ram_total_bytes)
        );
        if inv.gpus.is_empty() {
            let _ = writeln!(
                out,
                "  gpus: none ({})",
                inv.gpu_notes.last().map(String::as_str).unwrap_or("")
            );
        }
        for gpu in &inv.gpus {
            let _ = writeln!(
                out,
                "  gpu {}: {} {} MiB",
                gpu.index, gpu.name, gpu.memory_total_mib
            );
        }
        for binary in &inv.binaries {
            let version = match (&binary.build, &binary.rpc_protocol) {
                (Some(b), _) => format!(
                    "build {} {} {}",
                    b.build_number
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into()),
                    b.version.as_deref().unwrap_or(""),
                    b.commit.as_deref().unwrap_or("")
                ),
                (None, Some(rpc)) => format!("RPC protocol v{rpc}"),
                _ => binary.error.clone().unwrap_or_default(),
            };
            let _ = writeln!(
                out,
                "  {}: {} ({})",
                binary.kind,
                version.split_whitespace().collect::<Vec<_>>().join(" "),
                binary.path
            );
        }
        if let Some(v) = &inv.vllm_version {
            let _ = writeln!(out, "  vllm: {v}");
        }
        if !status.processes.is_empty() {
            let _ = writeln!(
                out,
                "  {:<16} {:<13} {:<11} {:>7} {:>6} {:>8} {:>8}",
                "PROCESS", "KIND", "STATE", "PID", "PORT", "UPTIME", "RESTARTS"
            );
            for p in &status.processes {
                let _ = writeln!(
                    out,
                    "  {:<16} {:<13} {:<11} {:>7} {:>6} {:>8} {:>8}",
                    p.name,
                    p.kind.to_string(),
                    super::up::state_name(&p.state),
                    p.pid.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                    p.port.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
                    p.uptime_secs
                        .map(|x| format!("{x}s"))
                        .unwrap_or_else(|| "-".into()),
                    p.restarts
                );
                if let Some(e) = &p.last_error {
                    let _ = writeln!(out, "    last error: {}", e.lines().next().unwrap_or(""));
                }
                if let Some(m) = report.memory.iter().find(|m| m.name == p.name) {
                    let _ = write!(out, "{}", memory_lines(m));
                }
            }
        }
        let _ = write!(out, "{}", models_table(&inv.models, "  "));
        let _ = writeln!(out);
    }
    out
}

/// Plan and measurement side by side: `memory  CPU  predicted 20.7 MiB  measured 20.8 MiB`.
pub fn memory_lines(m: &tightwad_protocol::messages::ProcessMemory) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
    let mut out = String::new();
    let mut devices: Vec<&str> = m
        .predicted
        .iter()
        .chain(&m.measured)
        .map(|d| d.device.as_str())
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let find = |list: &[tightwad_protocol::messages::DeviceBytes], d: &str| {
        list.iter()
            .find(|x| x.device == d)
            .map(|x| mib(x.bytes))
            .unwrap_or_else(|| "-".into())
    };
    for d in devices {
        let _ = writeln!(
            out,
            "    memory {d:<24} predicted {:>11}  measured {:>11}",
            find(&m.predicted, d),
            find(&m.measured, d)
        );
    }
    if let Some(rss) = m.rss_bytes {
        let _ = writeln!(
            out,
            "    memory RSS {} (file-backed {})",
            mib(rss),
            mib(m.rss_file_bytes.unwrap_or(0))
        );
    }
    for n in &m.notes {
        let _ = writeln!(out, "    note: {n}");
    }
    out
}

fn models_table(models: &[ModelFile], indent: &str) -> String {
    let mut out = String::new();
    if models.is_empty() {
        let _ = writeln!(out, "{indent}models: none");
        return out;
    }
    let _ = writeln!(
        out,
        "{indent}{:<32} {:>9} {:<8} {:>8} {:<9} {:>6} {:>7} {:<16}",
        "MODEL", "SIZE", "ARCH", "PARAMS", "QUANT", "CTX", "EXPERTS", "VOCAB"
    );
    for m in models {
        match &m.gguf {
            Some(g) => {
                let _ = writeln!(
                    out,
                    "{indent}{:<32} {:>9} {:<8} {:>7.0}M {:<9} {:>6} {:>7} {:<16}",
                    m.file_name,
                    mib(m.size_bytes),
                    g.architecture.as_deref().unwrap_or("?"),
                    g.parameter_count as f64 / 1e6,
                    g.file_type.as_deref().unwrap_or("?"),
                    g.context_length
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    g.expert_count
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    g.vocab_fingerprint
                        .as_deref()
                        .map(|v| v.chars().take(16).collect::<String>())
                        .unwrap_or_else(|| "-".into())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{indent}{:<32} {:>9} {}",
                    m.file_name,
                    mib(m.size_bytes),
                    m.error.as_deref().unwrap_or("")
                );
            }
        }
    }
    out
}

pub fn render_models(reports: &[HostModels]) -> String {
    let mut out = String::new();
    for report in reports {
        match &report.error {
            Some(e) => {
                let _ = writeln!(out, "{}: UNREACHABLE: {e}", report.name);
            }
            None => {
                let _ = writeln!(out, "{}:", report.name);
                out.push_str(&models_table(&report.models, "  "));
            }
        }
    }
    out
}

/// The pools and native pairings of the layout, with the state of each member process.
pub fn render_layout(reports: &[HostReport], layout: &crate::cluster::layout::Layout) -> String {
    let state = |r: &crate::cluster::layout::ProcessRef| {
        reports
            .iter()
            .find(|h| h.name == r.host)
            .and_then(|h| h.status.as_ref())
            .and_then(|s| s.processes.iter().find(|p| p.name == r.process))
            .map(|p| super::up::state_name(&p.state))
            .unwrap_or_else(|| "unknown".into())
    };
    let mut out = String::new();
    for pool in &layout.pools {
        let _ = writeln!(
            out,
            "pool {}: coordinator {} ({}), workers {}",
            pool.name,
            pool.coordinator,
            state(&pool.coordinator),
            pool.workers
                .iter()
                .map(|w| format!("{w} ({})", state(w)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for native in &layout.native_pairings {
        let _ = writeln!(
            out,
            "native pairing {}: target {} ({}), draft on {} ({}), draft model {}",
            native.name,
            native.target,
            state(&native.target),
            native.draft_worker,
            state(&native.draft_worker),
            native.draft_model
        );
    }
    out
}

/// The drafters of the proxy's pairings (`drafts`), as the running proxy measured them: who won
/// how often, acceptance, speed, failures. `None` when the config names no proxy with several
/// drafters or the proxy does not answer (it may simply not run on this machine).
pub async fn render_drafters(config: &std::path::Path) -> Option<String> {
    let file: toml::Table = toml::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    let several = file.get("pairings")?.as_array()?.iter().any(|p| {
        p.get("drafts")
            .and_then(|d| d.as_array())
            .is_some_and(|d| !d.is_empty())
    });
    if !several {
        return None;
    }
    let listen: std::net::SocketAddr = file
        .get("listen")
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1:8088")
        .parse()
        .ok()?;
    let host = if listen.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        listen.ip().to_string()
    };
    let url = format!("http://{host}:{}/v1/tightwad/stats", listen.port());
    let key = std::env::var("TIGHTWAD_API_KEY").ok().or_else(|| {
        file.get("api_keys")?
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_string)
    });
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .ok()?;
    let mut req = http.get(&url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let stats: serde_json::Value = match req.send().await {
        Ok(r) if r.status().is_success() => r.json().await.ok()?,
        Ok(r) => return Some(format!("\nproxy {url}: {}\n", r.status())),
        Err(_) => return Some(format!("\nproxy {url}: not reachable\n")),
    };
    Some(drafters_text(&stats))
}

/// The drafters part of the stats JSON as text.
pub fn drafters_text(stats: &serde_json::Value) -> String {
    let mut out = String::new();
    for p in stats["pairings"].as_array().into_iter().flatten() {
        let Some(drafters) = p["drafters"].as_array().filter(|d| d.len() > 1) else {
            continue;
        };
        out.push_str(&format!(
            "\npairing {}: {} drafters\n",
            p["pairing"].as_str().unwrap_or("?"),
            drafters.len()
        ));
        for d in drafters {
            let pct = |v: &serde_json::Value| {
                v.as_f64()
                    .map(|a| format!("{:.0}%", a * 100.0))
                    .unwrap_or_else(|| "-".into())
            };
            let num = |v: &serde_json::Value| {
                v.as_f64()
                    .map(|x| format!("{x:.1}"))
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "  {}  wins {}  rounds {}  drafted {}  accepted {} ({})  tok/s {}  failures {}{}\n",
                d["url"].as_str().unwrap_or("?"),
                d["wins"],
                d["rounds"],
                d["drafted"],
                d["accepted"],
                pct(&d["acceptance"]),
                num(&d["tok_s"]),
                d["failures"],
                d["unusable"]
                    .as_str()
                    .map(|r| format!("  UNUSABLE: {r}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
