//! `tightwad init`: writes a commented coordinator config, either from flags (`--target`,
//! `--draft`, model paths) or from what the agents report (`--from-agents`: draft/target
//! pairs proposed by vocabulary fingerprint and size). Never overwrites a file without `--force`,
//! and writes atomically (a temporary file renamed or linked into place), so a crash never leaves
//! half a config.

pub mod access;
pub mod python;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tightwad_protocol::messages::ModelFile;

use crate::cluster::layout::host_ip;
use crate::cluster::{Fleet, FleetConfig, HostEntry};
use crate::doctor::live::target_slots;
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
    /// Draft tokens per round (k); the target then needs `-np` of at least k + 1 (one slot per
    /// verified position), which the agent snippets are written with.
    #[arg(long, default_value_t = 4)]
    pub draft_tokens: usize,
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

/// A proposed pairing: the target and the draft model, and the hosts they are on.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub target_host: String,
    pub target: ModelFile,
    pub draft_host: String,
    pub draft: ModelFile,
    /// The placement planner's llama-server flags for the target on its host's GPUs and RAM
    /// (`-c`, `-ngl`, `--tensor-split`, expert offload), when the host's inventory was read.
    pub target_placement: Option<Vec<String>>,
}

/// The planner's flags for `model` on a host with these GPUs and RAM (`tightwad inspect --plan`
/// does the same arithmetic), at `context` tokens.
pub fn placement_for(
    host: &str,
    status: &tightwad_protocol::messages::AgentStatus,
    model: &ModelFile,
    context: u64,
) -> Option<Vec<String>> {
    let g = model.gguf.as_ref()?;
    let bytes = tightwad_placement::plan::ModelBytes::from_summary(g, model.size_bytes);
    let target = tightwad_placement::plan::Target {
        host: host.to_string(),
        ram_bytes: status.inventory.host.ram_total_bytes,
        devices: crate::cluster::devices::gpu_devices(host, status),
    };
    let options = tightwad_placement::plan::PlanOptions {
        context: Some(context),
        ..Default::default()
    };
    Some(tightwad_placement::plan::plan(&bytes, &target, &options).flags)
}

/// Proposes pairs from the hosts' model files: files with the same vocabulary fingerprint form a
/// family; its largest model is the target, its smallest one under a quarter of the target's
/// parameters (else the smallest at all) the draft, preferably on another host than the target.
pub fn propose(models: &[(String, ModelFile)]) -> Vec<Proposal> {
    let mut families: std::collections::BTreeMap<String, Vec<&(String, ModelFile)>> =
        Default::default();
    for entry in models {
        if let Some(fp) = entry
            .1
            .gguf
            .as_ref()
            .and_then(|g| g.vocab_fingerprint.clone())
        {
            families.entry(fp).or_default().push(entry);
        }
    }
    let params = |m: &ModelFile| m.gguf.as_ref().map(|g| g.parameter_count).unwrap_or(0);
    let mut proposals = Vec::new();
    for members in families.values() {
        let Some(target) = members
            .iter()
            .max_by_key(|(h, m)| (params(m), m.size_bytes, std::cmp::Reverse(h.clone())))
        else {
            continue;
        };
        let smaller: Vec<_> = members
            .iter()
            .filter(|(_, m)| params(m) < params(&target.1))
            .collect();
        let small_enough: Vec<_> = smaller
            .iter()
            .filter(|(_, m)| params(m) * 4 <= params(&target.1))
            .collect();
        let pool: Vec<_> = if small_enough.is_empty() {
            smaller
        } else {
            small_enough.into_iter().copied().collect()
        };
        let smallest = pool.iter().map(|(_, m)| params(m)).min();
        let Some(smallest) = smallest else { continue };
        let candidates: Vec<_> = pool.iter().filter(|(_, m)| params(m) == smallest).collect();
        let draft = candidates
            .iter()
            .find(|(h, _)| *h != target.0)
            .or_else(|| candidates.first())
            .copied();
        if let Some(draft) = draft {
            proposals.push(Proposal {
                target_host: target.0.clone(),
                target: target.1.clone(),
                draft_host: draft.0.clone(),
                draft: draft.1.clone(),
                target_placement: None,
            });
        }
    }
    proposals
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

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn agent_snippet(out: &mut String, process: &str, model: &str, port: u16, extra: &str) {
    let _ = writeln!(out, "#   [[process]]");
    let _ = writeln!(out, "#   name = {}", quote(process));
    let _ = writeln!(out, "#   kind = \"llama-server\"");
    let _ = writeln!(
        out,
        "#   args = [\"-m\", {}, \"--host\", \"0.0.0.0\", \"--port\", \"{port}\", \"--cache-ram\", \"0\"{extra}]",
        quote(model)
    );
}

/// Context the target is planned for: the proxy verifies k + 1 copies of a context in one batch
/// (`doctor::live::target_slots`; `--kv-unified` shares one cache between the slots).
const TARGET_CONTEXT: u64 = 16384;

/// The config text for the given hosts and pairings, with a fresh key when `--listen` reaches
/// the network (see [`access`]).
pub fn render(args: &InitArgs, hosts: &[HostEntry], proposals: &[Proposal]) -> String {
    let access = access::decide(&args.listen, false, args.no_api_key);
    render_with(args, hosts, proposals, &access)
}

/// [`render`] with the API-key decision made by the caller (who tells the user about it).
pub fn render_with(
    args: &InitArgs,
    hosts: &[HostEntry],
    proposals: &[Proposal],
    access: &Access,
) -> String {
    let k = args
        .draft_tokens
        .clamp(1, tightwad_serve::engine::controller::K_MAX);
    let target_extra = format!(
        ", \"-np\", \"{}\", \"--kv-unified\", \"--metrics\"",
        target_slots(k)
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Tightwad coordinator config, written by `tightwad init`."
    );
    let _ = writeln!(
        out,
        "# Check it with `tightwad doctor`; serve with `tightwad proxy --config <this file>`.\n"
    );
    let _ = writeln!(
        out,
        "listen = \"{}\"          # where OpenAI clients connect",
        args.listen
    );
    let _ = writeln!(out, "{}", access.lines(&args.listen));
    if let Some(dir) = &args.state_dir {
        let _ = writeln!(
            out,
            "state_dir = {}   # the coordinator's identity and pinned agents\n",
            quote(&dir.display().to_string())
        );
    }
    if !hosts.is_empty() {
        let _ = writeln!(
            out,
            "# Hosts running tightwad-agent (enroll each with `tightwad token`)."
        );
    }
    for host in hosts {
        let _ = writeln!(
            out,
            "[[hosts]]\nname = {}\naddress = {}\n",
            quote(&host.name),
            quote(&host.address)
        );
    }
    let url_for = |host: &str, port: u16| {
        let address = hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| host_ip(&h.address).to_string())
            .unwrap_or_else(|| host.to_string());
        format!("http://{address}:{port}")
    };
    if proposals.is_empty() {
        let target = args
            .target_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let _ = writeln!(
            out,
            "[[pairings]]\nname = \"tightwad\"                 # the model name clients ask for"
        );
        let _ = writeln!(out, "target = {}   # llama-server with -np >= draft_tokens + 1, --kv-unified, --cache-ram 0", quote(&target));
        match &args.draft_url {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "draft = {}    # same tokenizer as the target",
                    quote(d)
                );
            }
            None => {
                let _ = writeln!(out, "# draft = \"http://draft-host:8081\"   # same tokenizer as the target; or \"prompt-lookup\"");
            }
        }
        let _ = writeln!(out, "draft_tokens = {k}\n");
        if let Some(model) = &args.target_model {
            let _ = writeln!(out, "# In the target host's agent.toml:");
            agent_snippet(&mut out, "target", model, 8080, &target_extra);
        }
        if let Some(model) = &args.draft_model {
            let _ = writeln!(out, "# In the draft host's agent.toml:");
            agent_snippet(&mut out, "draft", model, 8081, "");
        }
        return out;
    }
    for (i, p) in proposals.iter().enumerate() {
        let name = p
            .target
            .gguf
            .as_ref()
            .and_then(|g| g.name.clone())
            .unwrap_or_else(|| p.target.file_name.trim_end_matches(".gguf").to_string())
            .to_lowercase()
            .replace(' ', "-");
        let describe = |m: &ModelFile| {
            let g = m.gguf.clone().unwrap_or_default();
            format!(
                "{} ({:.0}M params, {})",
                m.file_name,
                g.parameter_count as f64 / 1e6,
                g.file_type.unwrap_or_else(|| "?".into())
            )
        };
        let (target_process, draft_process) = (format!("target-{i}"), format!("draft-{i}"));
        let _ = writeln!(
            out,
            "# Proposed from the agents' inventories: same vocabulary (fingerprint {}).\n# target {} on {}, draft {} on {}.",
            p.target.gguf.as_ref().and_then(|g| g.vocab_fingerprint.as_deref()).map(|f| crate::doctor::vocab::prefix(f, 12)).unwrap_or_else(|| "?".into()),
            describe(&p.target), p.target_host, describe(&p.draft), p.draft_host
        );
        let _ = writeln!(out, "[[pairings]]\nname = {}", quote(&name));
        let _ = writeln!(
            out,
            "target = {}",
            quote(&url_for(&p.target_host, 8080 + 2 * i as u16))
        );
        let _ = writeln!(
            out,
            "draft = {}",
            quote(&url_for(&p.draft_host, 8081 + 2 * i as u16))
        );
        let moe = p
            .target
            .gguf
            .as_ref()
            .and_then(|g| g.expert_count)
            .is_some_and(|n| n > 1);
        // `moe` holds k at 4: written only where draft_tokens lets k go higher (the proxy warns
        // about a `moe` that can change nothing).
        if moe && k > 4 {
            let _ = writeln!(
                out,
                "moe = true                         # the target's GGUF has experts: k <= 4 until calibration says otherwise"
            );
        } else if moe {
            let _ = writeln!(
                out,
                "# The target's GGUF has experts; with draft_tokens > 4 add `moe = true` (k held at 4 until calibrated)."
            );
        }
        let _ = writeln!(out, "draft_tokens = {k}\n");
        for (host, process, role) in [
            (&p.target_host, &target_process, "target"),
            (&p.draft_host, &draft_process, "draft"),
        ] {
            let _ = writeln!(
                out,
                "[[processes]]                      # which agent process plays which part (for doctor)\nhost = {}\nprocess = {}\nrole = \"{role}\"\npairing = {}\n",
                quote(host), quote(process), quote(&name)
            );
        }
        let _ = writeln!(out, "# In {}'s agent.toml:", p.target_host);
        let mut extra = target_extra.clone();
        if let Some(flags) = &p.target_placement {
            let _ = writeln!(
                out,
                "#   (placement planned for {}'s GPUs and RAM: {}; `tightwad inspect MODEL --plan` shows the arithmetic)",
                p.target_host,
                crate::cluster::launch::shell_join(flags)
            );
            for f in flags {
                extra.push_str(&format!(", {}", quote(f)));
            }
        }
        agent_snippet(
            &mut out,
            &target_process,
            &p.target.path,
            8080 + 2 * i as u16,
            &extra,
        );
        let _ = writeln!(out, "# In {}'s agent.toml:", p.draft_host);
        agent_snippet(
            &mut out,
            &draft_process,
            &p.draft.path,
            8081 + 2 * i as u16,
            "",
        );
        let _ = writeln!(out);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use tightwad_protocol::messages::GgufSummary;

    fn model(name: &str, params: u64, fingerprint: &str) -> ModelFile {
        ModelFile {
            file_name: name.into(),
            path: format!("/m/{name}"),
            folder: "/m".into(),
            size_bytes: params,
            gguf: Some(GgufSummary {
                parameter_count: params,
                vocab_fingerprint: Some(fingerprint.into()),
                ..Default::default()
            }),
            error: None,
        }
    }

    #[test]
    fn proposes_the_largest_as_target_and_a_small_same_vocabulary_draft() {
        let models = vec![
            ("a".to_string(), model("big.gguf", 70_000, "f1")),
            ("b".to_string(), model("small.gguf", 1_000, "f1")),
            ("a".to_string(), model("small.gguf", 1_000, "f1")),
            ("b".to_string(), model("other.gguf", 500, "f2")),
        ];
        let p = propose(&models);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].target.file_name, "big.gguf");
        assert_eq!(p[0].draft.file_name, "small.gguf");
        assert_eq!(p[0].draft_host, "b", "the draft prefers another host");
        let text = render(
            &InitArgs {
                draft_tokens: 4,
                ..Default::default()
            },
            &[HostEntry {
                name: "a".into(),
                address: "10.0.0.2:7420".into(),
                build_backend: None,
            }],
            &p,
        );
        let parsed: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            parsed["pairings"][0]["target"].as_str(),
            Some("http://10.0.0.2:8080")
        );
        let layout = crate::cluster::layout::Layout::parse(&text).expect("layout");
        assert_eq!(layout.processes.len(), 2);
    }

    /// The agent snippet asks for doctor's slot rule: k = 4 needs `-np 5`.
    #[test]
    fn the_target_snippet_has_the_slots_doctor_asks_for() {
        let written = render(
            &InitArgs {
                target_model: Some("/m/big.gguf".into()),
                draft_tokens: 4,
                ..Default::default()
            },
            &[],
            &[],
        );
        assert_eq!(target_slots(4), 5);
        assert!(written.contains("\"-np\", \"5\""), "{written}");
        assert!(written.contains("-np >= draft_tokens + 1"), "{written}");
    }

    /// `init` listens where the proxy does by default; a listen that reaches the network
    /// carries a key the proxy loads, or a loud note that it has none.
    #[test]
    fn init_listens_on_the_proxy_default_and_a_network_listen_carries_a_key() {
        let local = render(&InitArgs::default(), &[], &[]);
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&local).unwrap_or_else(|e| panic!("{e}\n{local}"));
        assert_eq!(
            config.listen,
            tightwad_serve::config::ProxyConfig::default().listen
        );
        assert!(config.api_keys.is_empty());
        let lan = InitArgs {
            listen: "0.0.0.0:8088".parse().expect("addr"),
            ..Default::default()
        };
        let keyed = render(&lan, &[], &[]);
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&keyed).unwrap_or_else(|e| panic!("{e}\n{keyed}"));
        assert_eq!(config.listen.to_string(), "0.0.0.0:8088");
        assert_eq!(config.api_keys.len(), 1, "{keyed}");
        assert!(config.api_keys[0].starts_with("sk-tightwad-"));
        let open = render(
            &InitArgs {
                no_api_key: true,
                ..lan
            },
            &[],
            &[],
        );
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&open).unwrap_or_else(|e| panic!("{e}\n{open}"));
        assert!(config.api_keys.is_empty());
        assert!(
            open.contains("WARNING") && open.contains("NO API key"),
            "{open}"
        );
    }

    /// Whatever init writes, the proxy itself must accept (its config refuses unknown keys).
    #[test]
    fn written_configs_are_valid_proxy_configs() {
        let from_flags = render(
            &InitArgs {
                target_url: Some("http://10.0.0.2:8080".into()),
                draft_url: Some("http://10.0.0.3:8081".into()),
                target_model: Some("/m/big.gguf".into()),
                draft_model: Some("/m/small.gguf".into()),
                draft_tokens: 4,
                ..Default::default()
            },
            &[],
            &[],
        );
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&from_flags).unwrap_or_else(|e| panic!("{e}\n{from_flags}"));
        config.validate().expect("valid");
        assert_eq!(
            config.pairings[0].draft.as_deref(),
            Some("http://10.0.0.3:8081")
        );
        assert!(
            from_flags.contains("\"-np\", \"5\", \"--kv-unified\""),
            "{from_flags}"
        );
        let models = vec![
            ("a".to_string(), model("big.gguf", 70_000, "f1")),
            ("b".to_string(), model("small.gguf", 1_000, "f1")),
        ];
        let hosts = [
            HostEntry {
                name: "a".into(),
                address: "10.0.0.2:7420".into(),
                build_backend: None,
            },
            HostEntry {
                name: "b".into(),
                address: "10.0.0.3:7420".into(),
                build_backend: None,
            },
        ];
        let from_agents = render(
            &InitArgs {
                draft_tokens: 4,
                state_dir: Some(PathBuf::from("/var/lib/tightwad")),
                ..Default::default()
            },
            &hosts,
            &propose(&models),
        );
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&from_agents).unwrap_or_else(|e| panic!("{e}\n{from_agents}"));
        config.validate().expect("valid");
        assert_eq!(
            config.pairings[0].draft.as_deref(),
            Some("http://10.0.0.3:8081")
        );
        assert!(!config.pairings[0].moe, "a dense target is not marked MoE");

        // A target whose GGUF has experts gets `moe = true` (k held at 4 until calibrated) where
        // draft_tokens lets k above 4.
        let mut big = model("big-moe.gguf", 70_000, "f1");
        if let Some(g) = big.gguf.as_mut() {
            g.expert_count = Some(128);
        }
        let models = vec![
            ("a".to_string(), big),
            ("b".to_string(), model("small.gguf", 1_000, "f1")),
        ];
        let moe_config = render(
            &InitArgs {
                draft_tokens: 8,
                ..Default::default()
            },
            &hosts,
            &propose(&models),
        );
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&moe_config).unwrap_or_else(|e| panic!("{e}\n{moe_config}"));
        config.validate().expect("valid");
        assert!(config.pairings[0].moe, "{moe_config}");
        assert!(config.pairings[0].to_pairing_config(0).moe);

        // At draft_tokens 4 `moe` could change nothing (k is at most 4 anyway): not written, the
        // comment says when it would matter.
        let small_k = render(
            &InitArgs {
                draft_tokens: 4,
                ..Default::default()
            },
            &hosts,
            &propose(&models),
        );
        let config: tightwad_serve::config::ProxyConfig =
            toml::from_str(&small_k).unwrap_or_else(|e| panic!("{e}\n{small_k}"));
        assert!(!config.pairings[0].moe, "{small_k}");
        assert!(small_k.contains("add `moe = true`"), "{small_k}");
    }

    /// `init --from-agents` writes the target's llama-server flags from the placement planner: a
    /// MoE model larger than the host's GPU keeps its experts in RAM, a small dense one goes
    /// wholly on the GPU.
    #[test]
    fn the_targets_flags_come_from_the_placement_plan() {
        use tightwad_protocol::messages::{AgentStatus, Gpu, GpuVendor, HostInfo, Inventory};
        let status = AgentStatus {
            node_name: "gpu-box".into(),
            software_version: "0".into(),
            protocol_version: 3,
            uptime_secs: 0,
            processes: vec![],
            inventory: Inventory {
                host: HostInfo {
                    ram_total_bytes: 128 << 30,
                    ram_available_bytes: 120 << 30,
                    ..Default::default()
                },
                gpus: vec![Gpu {
                    vendor: GpuVendor::Nvidia,
                    index: 0,
                    name: "RTX 4090".into(),
                    memory_total_mib: 24 * 1024,
                    memory_used_mib: None,
                    driver: None,
                }],
                ..Default::default()
            },
        };
        let mut moe = model("gpt-oss-120b.gguf", 117_000_000_000, "f1");
        moe.size_bytes = 60_000_000_000;
        if let Some(g) = moe.gguf.as_mut() {
            g.tensor_bytes = 60_000_000_000;
            g.expert_tensor_bytes = 55_000_000_000;
            g.expert_count = Some(128);
            g.block_count = Some(36);
            g.context_length = Some(131072);
        }
        let flags = placement_for("gpu-box", &status, &moe, TARGET_CONTEXT).expect("planned");
        let joined = flags.join(" ");
        assert!(joined.contains("-ngl"), "{joined}");
        assert!(
            joined.contains("--n-cpu-moe")
                || joined.contains("--cpu-moe")
                || joined.contains("-ot"),
            "55 GB of experts cannot sit on a 24 GB card: {joined}"
        );

        let mut dense = model("small-dense.gguf", 1_000_000_000, "f1");
        dense.size_bytes = 2_000_000_000;
        if let Some(g) = dense.gguf.as_mut() {
            g.tensor_bytes = 2_000_000_000;
            g.block_count = Some(24);
        }
        let flags = placement_for("gpu-box", &status, &dense, TARGET_CONTEXT).expect("planned");
        let joined = flags.join(" ");
        assert!(
            !joined.contains("moe") && !joined.contains("-ot"),
            "{joined}"
        );

        // The written agent.toml snippet carries them.
        let proposals = vec![Proposal {
            target_host: "gpu-box".into(),
            target: moe.clone(),
            draft_host: "desk".into(),
            draft: model("draft.gguf", 1_000, "f1"),
            target_placement: placement_for("gpu-box", &status, &moe, TARGET_CONTEXT),
        }];
        let text = render(
            &InitArgs {
                draft_tokens: 4,
                ..Default::default()
            },
            &[],
            &proposals,
        );
        assert!(text.contains("placement planned for gpu-box"), "{text}");
        assert!(text.contains("\"-ngl\""), "{text}");
    }

    #[test]
    fn never_overwrites_without_force() {
        let dir = std::env::temp_dir().join(format!("tightwad-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("t.toml");
        let _ = std::fs::remove_file(&path);
        write_atomically(&path, "a = 1\n", false).expect("first write");
        assert!(write_atomically(&path, "a = 2\n", false).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a = 1\n");
        write_atomically(&path, "a = 3\n", true).expect("forced");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "a = 3\n");
        let leftovers = std::fs::read_dir(&dir).expect("ls").count();
        assert_eq!(leftovers, 1, "no temporary files left");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
