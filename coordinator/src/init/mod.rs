//! `tightwad init`: writes a commented coordinator config, either from flags (`--target`,
//! `--draft`, model paths) or from what the agents report (`--from-agents`: draft/target
//! pairs proposed by vocabulary fingerprint and size). Never overwrites a file without `--force`,
//! and writes atomically (a temporary file renamed or linked into place), so a crash never leaves
//! half a config.

pub mod access;
mod propose;
pub mod python;
mod render;
#[cfg(test)]
mod tests;

pub use propose::{placement_for, propose, Proposal};
use render::TARGET_CONTEXT;
pub use render::{render, render_with};

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::cluster::{Fleet, FleetConfig, HostEntry};
use access::{default_listen, Access};

#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Target llama-server URL (the big model).
    #[arg(long = "target", value_name = "URL")]
    pub target_url: Option<String>,
    /// Draft llama-server URL (a small model with the same vocabulary).
    #[arg(long = "draft", value_name = "URL")]
    pub draft_url: Option<String>,
    /// Path of the target model on its host (for the agent config written as a comment).
    #[arg(long, value_name = "PATH")]
    pub target_model: Option<String>,
    /// Path of the draft model on its host.
    #[arg(long, value_name = "PATH")]
    pub draft_model: Option<String>,
    /// A host running tightwad-agent, `NAME=ADDRESS` (repeated or comma-separated); with
    /// `--from-agents` their inventories propose the pairings.
    #[arg(long = "host", value_name = "NAME=ADDRESS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Ask the agents for their model files and propose target/draft pairs.
    #[arg(long)]
    pub from_agents: bool,
    /// The most draft tokens per round (k, 1 to 8) to write into the config. Unset: the proxy's
    /// default (8 where the target verifies a draft in one pass, else 4). The agent snippets give
    /// the target `-np` k + 1 (what a stock llama-server needs; a patched one uses one).
    #[arg(long)]
    pub draft_tokens: Option<usize>,
    /// Where the proxy listens (the proxy's own default). An address beyond loopback gets a
    /// generated API key, unless --no-api-key.
    #[arg(long, default_value_t = default_listen(), value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Write no API key even when --listen reaches beyond this machine (the config then says
    /// loudly that anyone on the network may use the proxy).
    #[arg(long)]
    pub no_api_key: bool,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
    /// The coordinator's identity folder, written as `state_dir` (default
    /// `~/.tightwad/coordinator`); `--from-agents` connects with this identity.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Convert a Python Tightwad config (`cluster.yaml`) instead; every key that cannot be
    /// carried over is reported with the reason.
    #[arg(long, value_name = "CLUSTER_YAML", conflicts_with = "from_agents")]
    pub from: Option<PathBuf>,
    /// Print what was written (path, pairings, hosts, keys not carried over) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Add the agents that answer on the LAN (mDNS; `discovery = true` in their agent.toml) to
    /// `[[hosts]]`. Finding grants no trust: enroll each with a join token. Agents whose
    /// certificate changed are left out.
    #[arg(long, conflicts_with = "from")]
    pub discover: bool,
    /// Seconds `--discover` listens for answers.
    #[arg(
        long,
        default_value_t = 3.0,
        requires = "discover",
        value_name = "SECONDS"
    )]
    pub discover_timeout: f64,
}

impl Default for InitArgs {
    /// What `tightwad init` means with no flags (the defaults `--help` shows).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Bare {
            #[command(flatten)]
            args: InitArgs,
        }
        <Bare as clap::Parser>::parse_from(["init"]).args
    }
}

fn parse_host(text: &str) -> anyhow::Result<HostEntry> {
    let (name, address) = text
        .split_once('=')
        .filter(|(n, a)| !n.is_empty() && !a.is_empty())
        .with_context(|| format!("--host {text:?} must be NAME=ADDRESS"))?;
    Ok(HostEntry {
        name: name.to_string(),
        address: address.to_string(),
        build_backend: None,
    })
}

/// Writes `text` to `path` atomically: a temporary file in the same folder, synced, then linked
/// into place (fails if `path` exists: no overwrite race) or, with `force`, renamed over it.
pub fn write_atomically(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    if !force && path.exists() {
        anyhow::bail!("{} exists; pass --force to replace it", path.display());
    }
    let temporary = folder.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if force {
            std::fs::rename(&temporary, path)
                .with_context(|| format!("replacing {}", path.display()))?;
        } else {
            std::fs::hard_link(&temporary, path).with_context(|| {
                format!(
                    "{} exists (or cannot be created); pass --force to replace it",
                    path.display()
                )
            })?;
        }
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_file(&temporary);
    result
}

/// `init --from`: converts, writes, reports.
fn run_from(args: &InitArgs, from: &Path, config: &Path) -> anyhow::Result<ExitCode> {
    let yaml =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let conversion = python::convert_with(&yaml, args.no_api_key)
        .with_context(|| format!("converting {}", from.display()))?;
    // What we write must load: the proxy's own loader refuses unknown keys.
    let parsed: tightwad_serve::config::ProxyConfig = toml::from_str(&conversion.toml)
        .context("the converted config does not parse (a bug: please report it)")?;
    write_atomically(config, &conversion.toml, args.force)?;
    if conversion.access == Access::Open || !args.json {
        if let Some(notice) = conversion.access.notice(&parsed.listen) {
            eprintln!("{notice}");
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": config,
                "from": from,
                "listen": parsed.listen,
                "api_key": match &conversion.access { Access::Generated(key) => Some(key), _ => None },
                "pairings": parsed.pairings.len(),
                "hosts": parsed.hosts.iter().filter_map(|h| h.get("name").and_then(|n| n.as_str())).collect::<Vec<_>>(),
                "pools": parsed.pools.iter().filter_map(|p| p.get("name").and_then(|n| n.as_str())).collect::<Vec<_>>(),
                "not_carried": conversion.not_carried,
                "agent_snippets": conversion.agent_snippets,
            }))?
        );
    } else {
        eprintln!(
            "wrote {} from {} ({} pairing(s), {} host(s), {} pool(s))",
            config.display(),
            from.display(),
            parsed.pairings.len(),
            parsed.hosts.len(),
            parsed.pools.len()
        );
        if !conversion.not_carried.is_empty() {
            eprintln!("not carried over:");
            for n in &conversion.not_carried {
                eprintln!("  {}: {}", n.key, n.reason);
            }
        }
        eprintln!(
            "check it with `tightwad doctor --config {}`",
            config.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the config to `config`.
pub async fn run(args: InitArgs, config: &Path) -> anyhow::Result<ExitCode> {
    if !args.force && config.exists() {
        anyhow::bail!("{} exists; pass --force to replace it", config.display());
    }
    if let Some(from) = &args.from {
        return run_from(&args, from, config);
    }
    let mut hosts: Vec<HostEntry> = args
        .hosts
        .iter()
        .map(|h| parse_host(h))
        .collect::<Result<_, _>>()?;
    if args.discover {
        anyhow::ensure!(
            args.discover_timeout.is_finite()
                && args.discover_timeout > 0.0
                && args.discover_timeout <= 600.0,
            "--discover-timeout must be between 0 and 600 seconds"
        );
        let fleet = FleetConfig {
            state_dir: args.state_dir.clone(),
            hosts,
        };
        let timeout = std::time::Duration::from_secs_f64(args.discover_timeout);
        hosts = crate::discover::hosts_for_init(&fleet, timeout).await?;
    }
    let mut proposals = Vec::new();
    if args.from_agents {
        anyhow::ensure!(
            !hosts.is_empty(),
            "--from-agents needs at least one --host NAME=ADDRESS"
        );
        let fleet = Fleet::open(FleetConfig {
            state_dir: args.state_dir.clone(),
            hosts: hosts.clone(),
        })?;
        let mut models = Vec::new();
        let mut statuses = std::collections::HashMap::new();
        for host in &hosts {
            match fleet.connect(host).await {
                Ok(client) => {
                    match client.list_models().await {
                        Ok(list) => models.extend(list.into_iter().map(|m| (host.name.clone(), m))),
                        Err(e) => eprintln!("{}: cannot list models: {e}", host.name),
                    }
                    if let Ok(status) = client.status().await {
                        statuses.insert(host.name.clone(), status);
                    }
                }
                Err(e) => eprintln!("{}: unreachable: {e:#}", host.name),
            }
        }
        proposals = propose(&models);
        for p in &mut proposals {
            p.target_placement = statuses
                .get(&p.target_host)
                .and_then(|s| placement_for(&p.target_host, s, &p.target, TARGET_CONTEXT));
        }
        if proposals.is_empty() {
            eprintln!(
                "no two models with the same vocabulary found on the agents; writing a template"
            );
        }
    }
    let access = access::decide(&args.listen, false, args.no_api_key);
    let text = render_with(&args, &hosts, &proposals, &access);
    write_atomically(config, &text, args.force)?;
    if access == Access::Open || !args.json {
        if let Some(notice) = access.notice(&args.listen) {
            eprintln!("{notice}");
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "path": config,
                "listen": args.listen,
                "api_key": match &access { Access::Generated(key) => Some(key), _ => None },
                "pairings": proposals.len().max(1),
                "hosts": hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
                "proposals": proposals.iter().map(|p| serde_json::json!({
                    "target_host": p.target_host, "target": p.target.path,
                    "draft_host": p.draft_host, "draft": p.draft.path,
                })).collect::<Vec<_>>(),
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "wrote {} ({} pairing(s)); check it with `tightwad doctor --config {}`",
        config.display(),
        proposals.len().max(1),
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}
