//! Fleet commands of the coordinator CLI: `tightwad status`, `tightwad agent ...`,
//! `tightwad models ...`, `tightwad token`. They talk to the `tightwad-agent` on every host over
//! the QUIC peer protocol (`tightwad-protocol`).

pub mod agent;
pub mod build;
pub mod logs;
pub mod naming;
pub mod patches;
pub mod status;
pub mod swap;
pub mod up;

use anyhow::Context;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;
use tightwad_protocol::messages::{PeerAddress, Reply};

pub use crate::cluster::{Fleet, FleetConfig, HostEntry};
pub use agent::{print_agent_logs, AgentAction};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Every host: reachable, versions, GPUs, processes, models.
    #[command(
        after_long_help = "Examples:\n  tightwad status\n  tightwad status --host gpu-box --json"
    )]
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Control the processes an agent supervises.
    #[command(
        after_long_help = "Examples:\n  tightwad agent start gpu-box/target\n  tightwad agent restart gpu-box/target --json\n  tightwad agent logs gpu-box/target --tail 50 -f"
    )]
    Agent {
        /// Print the result as JSON (one object per process, or per log line).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: AgentAction,
    },
    /// Model files on the hosts.
    #[command(
        after_long_help = "Examples:\n  tightwad models list --json\n  tightwad models find gpt-oss-20b-Q8_0.gguf\n  tightwad models copy gpt-oss-20b-Q8_0.gguf --from gpu-box --to desktop"
    )]
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Start the RPC pools and native pairings of the config's layout (workers first).
    #[command(after_long_help = "Examples:\n  tightwad up\n  tightwad up big-pool --json")]
    Up {
        /// Only the pool or native pairing of this name.
        name: Option<String>,
        /// Start even when `tightwad doctor` finds a problem with it.
        #[arg(long)]
        skip_doctor: bool,
        /// Print what was started as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the RPC pools and native pairings of the layout (llama-server first, then workers).
    #[command(after_long_help = "Examples:\n  tightwad down\n  tightwad down big-pool --json")]
    Down {
        /// Only the pool or native pairing of this name.
        name: Option<String>,
        /// Print what was stopped as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put another model into one supervised llama-server (a pairing's target or an RPC pool's
    /// coordinator): drain the pairing at the proxy, restart just that process with the new
    /// model, resume. Other hosts and processes are not touched; no request is lost.
    Swap(swap::SwapArgs),
    /// Print a join token for a new agent (`tightwad-agent --join <token>`).
    #[command(after_long_help = "Examples:\n  tightwad token\n  tightwad token --ttl 600 --json")]
    Token {
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        ttl: u64,
        /// Print {"token", "ttl_s", "command"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A managed process's output (HOST/NAME, or NAME when only one host has a process of that
    /// name), or the proxy's own log (`tightwad logs proxy`).
    #[command(
        after_long_help = "Examples:\n  tightwad logs target -f\n  tightwad logs gpu-box/target --tail 20\n  tightwad logs proxy -f\n  tightwad logs proxy --proxy http://10.0.0.1:8088 --json"
    )]
    Logs(logs::LogsArgs),
    /// Build one llama.cpp (same source, same ref) on every host, smoke-test it, switch the
    /// supervised servers to it; `--rollback` goes back.
    Build(build::BuildArgs),
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// Model files on every host (or one), with their GGUF metadata.
    #[command(after_long_help = "Example:\n  tightwad models list --host gpu-box --json")]
    List {
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
        /// Print JSON (one object per host) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Where a model file is, on every host (searches all of each agent's model folders).
    #[command(after_long_help = "Example:\n  tightwad models find gpt-oss-20b-Q8_0.gguf --json")]
    Find {
        /// File name, e.g. `gpt-oss-20b-Q8_0.gguf`.
        file: String,
        /// Print JSON (one object per host) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Copy a model file from one host to another (resumes an interrupted copy). With several
    /// sources (`--from a,b,c`, or every host that has the file when --from is left out) the
    /// receiver pulls pieces from all of them at once, each checked against the sources'
    /// manifest of piece hashes; a source that dies mid-way has its pieces fetched by the others.
    /// A progress bar on a terminal, a line per tenth otherwise, nothing with --json.
    #[command(
        after_long_help = "Examples:\n  tightwad models copy big.gguf --to desktop\n  tightwad models copy big.gguf --from gpu-a,gpu-b,nas --to desktop\n  tightwad models copy big.gguf --from gpu-box --to desktop --max-rate 50000000 --json"
    )]
    Copy {
        /// File name, as `tightwad models list` shows it.
        file: String,
        /// Host(s) that have the file, comma-separated or repeated (default: every other host
        /// that has it).
        #[arg(long, value_delimiter = ',', value_name = "HOST")]
        from: Vec<String>,
        /// Host to copy to.
        #[arg(long, value_name = "HOST")]
        to: String,
        /// Limit the transfer rate (bytes per second; per source for a multi-source pull).
        #[arg(long)]
        max_rate: Option<u64>,
        /// Piece size in MiB for a multi-source pull (1–16).
        #[arg(long, default_value_t = 8)]
        piece_mib: u32,
        /// Print the receiver's summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one fleet command against the hosts in `config`.
pub async fn run(cmd: FleetCommand, config: &Path) -> anyhow::Result<ExitCode> {
    // `token` works before any host is configured; every other command needs the file, and
    // says which one it looked for before creating the coordinator's keys.
    let loaded = if matches!(cmd, FleetCommand::Token { .. }) {
        FleetConfig::load(config)?
    } else {
        FleetConfig::load_existing(config)?
    };
    let fleet = Fleet::open(loaded)?;
    match cmd {
        FleetCommand::Status { json, host } => {
            let reports = status::collect(&fleet, host.as_deref()).await?;
            let layout = crate::cluster::layout::Layout::load(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", status::render(&reports));
                print!("{}", status::render_layout(&reports, &layout));
                if let Some(text) = status::render_drafters(config).await {
                    print!("{text}");
                }
            }
            let all_up = reports.iter().all(|r| r.reachable);
            Ok(if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        FleetCommand::Agent { action, json } => agent::run(&fleet, action, json).await,
        FleetCommand::Logs(args) => logs::run(&fleet, config, args).await,
        FleetCommand::Up {
            name,
            skip_doctor,
            json,
        } => {
            let layout = crate::cluster::layout::Layout::load(config)?;
            if !skip_doctor {
                let mut checking =
                    crate::progress::Steps::new(crate::progress::Progress::mode(json), "up", 0);
                checking.step("checking what would start (doctor, offline)");
                let failures = up::preflight(config, &layout, name.as_deref()).await;
                checking.finish("checked");
                let failures = failures?;
                if !failures.is_empty() {
                    for check in &failures {
                        eprintln!(
                            "✗ {} {}: {}",
                            check.category.label(),
                            check.subject,
                            check.message
                        );
                        if let Some(hint) = &check.hint {
                            eprintln!("    fix: {hint}");
                        }
                    }
                    anyhow::bail!(
                        "doctor found {} problem(s) with what `tightwad up` would start: fix them, or pass --skip-doctor",
                        failures.len()
                    );
                }
            }
            let started = up::run_with_steps(
                &fleet,
                &layout,
                name.as_deref(),
                crate::progress::Progress::mode(json),
            )
            .await?;
            up::print(&started, json)?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Down { name, json } => {
            let stopped = up::down(
                &fleet,
                &crate::cluster::layout::Layout::load(config)?,
                name.as_deref(),
            )
            .await?;
            up::print(&stopped, json)?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Models { action } => models(&fleet, action).await,
        FleetCommand::Swap(args) => {
            let report = swap::run(&fleet, &args, config).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", swap::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Token { ttl, json } => {
            let token = fleet
                .pending
                .issue(fleet.identity.fingerprint(), ttl)?
                .to_string();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "token": token,
                        "ttl_s": ttl,
                        "command": format!("tightwad-agent --join {token}"),
                    })
                );
            } else {
                eprintln!("join token (valid {ttl}s); on the new host run:\n  tightwad-agent --join {token}\nthen add the host to [[hosts]] and run `tightwad status` to enroll it.");
                println!("{token}");
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Build(args) => build::run(&fleet, args).await,
    }
}

async fn models(fleet: &Fleet, action: ModelsAction) -> anyhow::Result<ExitCode> {
    match action {
        ModelsAction::List { host, json } => {
            let reports = status::collect_models(fleet, host.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", status::render_models(&reports));
            }
            Ok(if reports.iter().all(|r| r.error.is_none()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ModelsAction::Find { file, json } => {
            let found = status::find_model(fleet, &file).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                for host in &found {
                    match (&host.error, host.models.is_empty()) {
                        (Some(e), _) => println!("{}: UNREACHABLE: {e}", host.name),
                        (None, true) => println!("{}: not found", host.name),
                        (None, false) => {
                            for m in &host.models {
                                println!("{}: {} ({} bytes)", host.name, m.path, m.size_bytes);
                            }
                        }
                    }
                }
            }
            let anywhere = found.iter().any(|h| !h.models.is_empty());
            Ok(if anywhere {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ModelsAction::Copy {
            file,
            from,
            to,
            max_rate,
            piece_mib,
            json,
        } => {
            let sources = match from.len() {
                0 => hosts_with(fleet, &file, &to).await,
                _ => from.clone(),
            };
            let mut progress = crate::progress::Progress::new(
                crate::progress::Progress::mode(json),
                crate::progress::Unit::Bytes,
                file.clone(),
                0,
            );
            if sources.len() > 1 {
                progress.set_message(format!("{file} (pulling from {} sources)", sources.len()));
                let summary = pull(
                    fleet,
                    &file,
                    &sources,
                    &to,
                    piece_mib << 20,
                    max_rate,
                    |p| {
                        progress.set_total(p.bytes_total);
                        progress.set(p.bytes_done);
                    },
                )
                .await;
                if let Ok(summary) = &summary {
                    progress.set_total(summary.transfer.bytes);
                    progress.set(summary.transfer.bytes);
                }
                progress.finish();
                let summary = summary?;
                if json {
                    let mut value = serde_json::to_value(&summary)?;
                    value["to"] = serde_json::json!(to);
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    let t = &summary.transfer;
                    println!(
                        "pulled {} to {}:{} ({} bytes in {} pieces, {} already there, sha256 {}, {:.1}s)",
                        t.file_name, to, t.path, t.bytes, summary.pieces, summary.pieces_resumed, t.sha256, t.seconds
                    );
                    for s in &summary.sources {
                        println!(
                            "  {}: {} pieces, {} MiB{}",
                            s.name,
                            s.pieces,
                            s.bytes >> 20,
                            s.error
                                .as_ref()
                                .map(|e| format!(" (stopped: {e})"))
                                .unwrap_or_default()
                        );
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut resumed_shown = false;
            let summary = copy(
                fleet,
                &file,
                sources.first().map(String::as_str),
                &to,
                max_rate,
                |p| {
                    if p.resumed_from > 0 && !resumed_shown {
                        resumed_shown = true;
                        progress.set_message(format!(
                            "{} (resumed at {} MiB)",
                            p.file_name,
                            p.resumed_from >> 20
                        ));
                    }
                    progress.set_total(p.bytes_total);
                    progress.set(p.bytes_done);
                },
            )
            .await;
            if let Ok(summary) = &summary {
                // The sender reports every few MiB; the end is the summary.
                progress.set_total(summary.bytes);
                progress.set(summary.bytes);
            }
            progress.finish();
            let summary = summary?;
            if json {
                let mut value = serde_json::to_value(&summary)?;
                value["to"] = serde_json::json!(to);
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "copied {} to {}:{} ({} bytes, resumed from {}, sha256 {}, {:.1}s)",
                summary.file_name,
                to,
                summary.path,
                summary.bytes,
                summary.resumed_from,
                summary.sha256,
                summary.seconds
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The hosts other than `to` that have `file` (unreachable ones are skipped).
async fn hosts_with(fleet: &Fleet, file: &str, to: &str) -> Vec<String> {
    let mut found = Vec::new();
    for host in fleet.config.hosts.iter().filter(|h| h.name != to) {
        if let Ok(client) = fleet.connect(host).await {
            if client.find_model(file).await.is_ok_and(|m| !m.is_empty()) {
                found.push(host.name.clone());
            }
        }
    }
    found
}

/// Pulls `file` onto `to` from all `sources` at once (see `tightwad_agent::pull`): introduces
/// the receiver to every source (only pinned peers may read pieces there), then asks the
/// receiver to pull; returns its verified summary.
pub async fn pull(
    fleet: &Fleet,
    file: &str,
    sources: &[String],
    to: &str,
    piece_bytes: u32,
    max_rate: Option<u64>,
    mut on_progress: impl FnMut(&tightwad_protocol::messages::TransferProgress),
) -> anyhow::Result<tightwad_protocol::messages::PullSummary> {
    let to_host = fleet.config.host(to)?;
    let destination = fleet.connect(to_host).await?;
    let mut addresses = Vec::new();
    let mut unreachable = Vec::new();
    for name in sources {
        anyhow::ensure!(name != to, "{to} is both a source and the destination");
        let host = fleet.config.host(name)?;
        let source = match fleet.connect(host).await {
            Ok(c) => c,
            Err(e) => {
                unreachable.push(format!("{name}: {e:#}"));
                continue;
            }
        };
        source
            .introduce_peer(&to_host.name, destination.peer_fingerprint())
            .await
            .with_context(|| format!("introducing {to} to {name}"))?;
        addresses.push(PeerAddress {
            name: host.name.clone(),
            address: host.address.clone(),
            fingerprint: source.peer_fingerprint(),
        });
    }
    anyhow::ensure!(
        !addresses.is_empty(),
        "no source is reachable: {}",
        unreachable.join("; ")
    );
    for u in &unreachable {
        eprintln!("skipping unreachable source {u}");
    }
    let mut stream = destination
        .open(&tightwad_protocol::messages::Request::PullModel {
            file_name: file.to_string(),
            sources: addresses,
            piece_bytes: Some(piece_bytes),
            max_bytes_per_second: max_rate,
        })
        .await?;
    loop {
        match stream
            .next_reply()
            .await
            .with_context(|| format!("pulling {file} onto {to}"))?
        {
            Some(Reply::Progress(p)) => on_progress(&p),
            Some(Reply::PullDone(summary)) => return Ok(*summary),
            Some(Reply::Error(e)) => anyhow::bail!("{to}: {}", e.message),
            Some(other) => anyhow::bail!("unexpected reply {} during the pull", other.kind()),
            None => anyhow::bail!("{to} ended the pull without a result"),
        }
    }
}

/// Copies `file` between hosts: introduces the sender to the receiver, then asks the sender to
/// push it; returns the receiver's verified summary.
pub async fn copy(
    fleet: &Fleet,
    file: &str,
    from: Option<&str>,
    to: &str,
    max_rate: Option<u64>,
    mut on_progress: impl FnMut(&tightwad_protocol::messages::TransferProgress),
) -> anyhow::Result<tightwad_protocol::messages::TransferSummary> {
    let to_host = fleet.config.host(to)?;
    let (from_host, source) = match from {
        Some(name) => {
            let host = fleet.config.host(name)?;
            (host, fleet.connect(host).await?)
        }
        None => {
            let mut found = None;
            for host in fleet.config.hosts.iter().filter(|h| h.name != to) {
                if let Ok(client) = fleet.connect(host).await {
                    if client.find_model(file).await.is_ok_and(|m| !m.is_empty()) {
                        found = Some((host, client));
                        break;
                    }
                }
            }
            found.with_context(|| format!("no reachable host other than {to} has {file}"))?
        }
    };
    anyhow::ensure!(
        from_host.name != to_host.name,
        "source and destination are the same host"
    );
    let destination = fleet.connect(to_host).await?;
    destination
        .introduce_peer(&from_host.name, source.peer_fingerprint())
        .await
        .with_context(|| format!("introducing {} to {}", from_host.name, to_host.name))?;
    let target = PeerAddress {
        name: to_host.name.clone(),
        address: to_host.address.clone(),
        fingerprint: destination.peer_fingerprint(),
    };
    let mut stream = source.send_model(file, target, max_rate).await?;
    loop {
        match stream.next_reply().await.with_context(|| {
            format!("copying {file} from {} to {}", from_host.name, to_host.name)
        })? {
            Some(Reply::Progress(p)) => on_progress(&p),
            Some(Reply::TransferDone(summary)) => return Ok(summary),
            Some(other) => anyhow::bail!("unexpected reply {} during the copy", other.kind()),
            None => anyhow::bail!("{} ended the copy without a result", from_host.name),
        }
    }
}
