//! Fleet commands of the coordinator CLI: `tightwad status`, `tightwad agent ...`,
//! `tightwad models ...`, `tightwad token`. They talk to the `tightwad-agent` on every host over
//! the QUIC peer protocol (`tightwad-protocol`).

pub mod build;
pub mod config;
pub mod layout;
pub mod session;
pub mod status;
pub mod up;

use anyhow::Context;
use clap::Subcommand;
use std::path::Path;
use std::process::ExitCode;
use tightwad_protocol::messages::{LogStream, PeerAddress, Reply};

pub use config::{FleetConfig, HostEntry};
pub use session::Fleet;

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Every host: reachable, versions, GPUs, processes, models.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this host.
        #[arg(long)]
        host: Option<String>,
    },
    /// Control the processes an agent supervises.
    Agent {
        #[command(subcommand)]
        action: AgentAction,
    },
    /// Model files on the hosts.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Start the RPC pools and native pairings of the config's layout (workers first).
    Up {
        /// Only the pool or native pairing of this name.
        name: Option<String>,
        /// Start even when `tightwad doctor` finds a problem with it.
        #[arg(long)]
        skip_doctor: bool,
    },
    /// Stop the RPC pools and native pairings of the layout (llama-server first, then workers).
    Down {
        /// Only the pool or native pairing of this name.
        name: Option<String>,
    },
    /// Print a join token for a new agent (`tightwad-agent --join <token>`).
    Token {
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Build one llama.cpp (same source, same ref) on every host, smoke-test it, switch the
    /// supervised servers to it; `--rollback` goes back.
    Build(build::BuildArgs),
}

#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Start a configured process and wait until it is ready.
    Start {
        host: String,
        name: String,
        /// Arguments replacing the configured ones for this start (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a process (SIGTERM, then SIGKILL after the agent's grace period).
    Stop { host: String, name: String },
    /// Stop then start a process with its current arguments.
    Restart { host: String, name: String },
    /// A process's output.
    Logs {
        host: String,
        name: String,
        /// Lines of history.
        #[arg(long, default_value_t = 100)]
        tail: u32,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// Model files on every host (or one), with their GGUF metadata.
    List {
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Where a model file is, on every host (searches all of each agent's model folders).
    Find {
        /// File name, e.g. `gpt-oss-20b-Q8_0.gguf`.
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// Copy a model file from one host to another (resumes an interrupted copy).
    Copy {
        /// File name, as `tightwad models list` shows it.
        file: String,
        /// Host that has the file (default: the first host that has it).
        #[arg(long)]
        from: Option<String>,
        /// Host to copy to.
        #[arg(long)]
        to: String,
        /// Limit the transfer rate (bytes per second).
        #[arg(long)]
        max_rate: Option<u64>,
    },
}

/// Runs one fleet command against the hosts in `config`.
pub async fn run(cmd: FleetCommand, config: &Path) -> anyhow::Result<ExitCode> {
    let fleet = Fleet::open(FleetConfig::load(config)?)?;
    match cmd {
        FleetCommand::Status { json, host } => {
            let reports = status::collect(&fleet, host.as_deref()).await?;
            let layout = layout::Layout::load(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", status::render(&reports));
                print!("{}", status::render_layout(&reports, &layout));
            }
            let all_up = reports.iter().all(|r| r.reachable);
            Ok(if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        FleetCommand::Agent { action } => agent(&fleet, action).await,
        FleetCommand::Up { name, skip_doctor } => {
            let layout = layout::Layout::load(config)?;
            if !skip_doctor {
                let failures = up::preflight(config, &layout, name.as_deref()).await?;
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
            up::run(&fleet, &layout, name.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Down { name } => {
            up::down(&fleet, &layout::Layout::load(config)?, name.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Models { action } => models(&fleet, action).await,
        FleetCommand::Build(args) => build::run(&fleet, args).await,
        FleetCommand::Token { ttl } => {
            let token = fleet.pending.issue(fleet.identity.fingerprint(), ttl)?;
            eprintln!("join token (valid {ttl}s); on the new host run:\n  tightwad-agent --join {token}\nthen add the host to [[hosts]] and run `tightwad status` to enroll it.");
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn agent(fleet: &Fleet, action: AgentAction) -> anyhow::Result<ExitCode> {
    let print = |status: tightwad_protocol::messages::ProcessStatus| {
        println!(
            "{} {:?} pid={} port={} restarts={}{}",
            status.name,
            status.state,
            status
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            status
                .port
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            status.restarts,
            status
                .last_error
                .map(|e| format!(" last_error={e}"))
                .unwrap_or_default()
        );
    };
    match action {
        AgentAction::Start { host, name, args } => {
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            let args = if args.is_empty() { None } else { Some(args) };
            print(
                client
                    .start_process(&name, args)
                    .await
                    .with_context(|| format!("starting {name} on {host}"))?,
            );
        }
        AgentAction::Stop { host, name } => {
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            print(
                client
                    .stop_process(&name)
                    .await
                    .with_context(|| format!("stopping {name} on {host}"))?,
            );
        }
        AgentAction::Restart { host, name } => {
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            print(
                client
                    .restart_process(&name)
                    .await
                    .with_context(|| format!("restarting {name} on {host}"))?,
            );
        }
        AgentAction::Logs {
            host,
            name,
            tail,
            follow,
        } => {
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            let mut stream = client.logs(&name, tail, follow).await?;
            while let Some(reply) = stream
                .next_reply()
                .await
                .with_context(|| format!("logs of {name} on {host}"))?
            {
                if let Reply::LogLines(lines) = reply {
                    for line in lines {
                        match line.stream {
                            LogStream::Supervisor => println!("[agent] {}", line.line),
                            _ => println!("{}", line.line),
                        }
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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
        } => {
            let summary = copy(fleet, &file, from.as_deref(), &to, max_rate, |p| {
                eprint!(
                    "\r{}: {} / {} MiB{}",
                    p.file_name,
                    p.bytes_done >> 20,
                    p.bytes_total >> 20,
                    if p.resumed_from > 0 {
                        format!(" (resumed at {} MiB)", p.resumed_from >> 20)
                    } else {
                        String::new()
                    }
                );
            })
            .await?;
            eprintln!();
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
