//! `tightwad agent start|stop|restart|logs HOST/NAME`: one supervised process, through its
//! host's agent. Start and restart wait until the process is ready, showing each step
//! ([`crate::progress::Steps`]).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tightwad_protocol::messages::{LogStream, Reply};

use super::{naming, up, Fleet};

/// What `tightwad agent` does to one process.
#[derive(Subcommand, Debug)]
pub enum AgentAction {
    /// Start a configured process and wait until it is ready (a step line per stage on a pipe,
    /// a spinner on a terminal, nothing with --json).
    #[command(
        after_long_help = "Example:\n  tightwad agent start gpu-box/target -- -m /models/big.gguf --port 8080"
    )]
    Start {
        /// The process: HOST/NAME, or NAME when only one host has a process of that name.
        #[arg(value_name = "HOST/NAME")]
        process: String,
        /// The NAME of the old two-word spelling `HOST NAME` (deprecated; write HOST/NAME).
        #[arg(hide = true)]
        old_name: Option<String>,
        /// Arguments replacing the configured ones for this start (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Stop a process (SIGTERM, then SIGKILL after the agent's grace period).
    #[command(after_long_help = "Example:\n  tightwad agent stop gpu-box/target")]
    Stop {
        /// The process: HOST/NAME, or NAME when only one host has a process of that name.
        #[arg(value_name = "HOST/NAME")]
        process: String,
        /// The NAME of the old two-word spelling `HOST NAME` (deprecated; write HOST/NAME).
        #[arg(hide = true)]
        old_name: Option<String>,
    },
    /// Stop then start a process with its current arguments.
    #[command(after_long_help = "Example:\n  tightwad agent restart gpu-box/target")]
    Restart {
        /// The process: HOST/NAME, or NAME when only one host has a process of that name.
        #[arg(value_name = "HOST/NAME")]
        process: String,
        /// The NAME of the old two-word spelling `HOST NAME` (deprecated; write HOST/NAME).
        #[arg(hide = true)]
        old_name: Option<String>,
    },
    /// A process's output (the same as `tightwad logs HOST/NAME`).
    #[command(after_long_help = "Example:\n  tightwad agent logs gpu-box/target --tail 50 -f")]
    Logs {
        /// The process: HOST/NAME, or NAME when only one host has a process of that name.
        #[arg(value_name = "HOST/NAME")]
        process: String,
        /// The NAME of the old two-word spelling `HOST NAME` (deprecated; write HOST/NAME).
        #[arg(hide = true)]
        old_name: Option<String>,
        /// Lines of history.
        #[arg(long, short = 'n', default_value_t = 100)]
        tail: u32,
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Runs one `tightwad agent` action; `json` prints the process's status (or each log line) as JSON.
pub async fn run(fleet: &Fleet, action: AgentAction, json: bool) -> anyhow::Result<ExitCode> {
    let print = |status: tightwad_protocol::messages::ProcessStatus| {
        if json {
            println!(
                "{}",
                serde_json::to_string(&status)
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
            );
            return;
        }
        println!(
            "{} {} pid={} port={} restarts={}{}",
            status.name,
            up::state_name(&status.state),
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
    let named = |process: &str, old_name: Option<&str>| -> anyhow::Result<naming::ProcessName> {
        let (name, warning) = naming::ProcessName::parse(process, old_name)?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        Ok(name)
    };
    match action {
        AgentAction::Start {
            process,
            old_name,
            args,
        } => {
            let process = named(&process, old_name.as_deref())?;
            let mut steps = crate::progress::Steps::new(
                crate::progress::Progress::mode(json),
                "agent start",
                2,
            );
            steps.step(format!("connecting to the agent of {process}"));
            let host = process.host(fleet).await?;
            let name = process.name;
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            steps.step(format!(
                "starting {host}/{name} and waiting until it is ready"
            ));
            let args = if args.is_empty() { None } else { Some(args) };
            let status = client
                .start_process(&name, args)
                .await
                .with_context(|| format!("starting {host}/{name}"))?;
            steps.finish(format!("{host}/{name} {}", up::state_name(&status.state)));
            print(status);
        }
        AgentAction::Stop { process, old_name } => {
            let process = named(&process, old_name.as_deref())?;
            let host = process.host(fleet).await?;
            let name = process.name;
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            print(
                client
                    .stop_process(&name)
                    .await
                    .with_context(|| format!("stopping {host}/{name}"))?,
            );
        }
        AgentAction::Restart { process, old_name } => {
            let process = named(&process, old_name.as_deref())?;
            let mut steps = crate::progress::Steps::new(
                crate::progress::Progress::mode(json),
                "agent restart",
                2,
            );
            steps.step(format!("connecting to the agent of {process}"));
            let host = process.host(fleet).await?;
            let name = process.name;
            let client = fleet.connect(fleet.config.host(&host)?).await?;
            steps.step(format!(
                "restarting {host}/{name} and waiting until it is ready"
            ));
            let status = client
                .restart_process(&name)
                .await
                .with_context(|| format!("restarting {host}/{name}"))?;
            steps.finish(format!("{host}/{name} {}", up::state_name(&status.state)));
            print(status);
        }
        AgentAction::Logs {
            process,
            old_name,
            tail,
            follow,
        } => {
            let process = named(&process, old_name.as_deref())?;
            let host = process.host(fleet).await?;
            print_agent_logs(fleet, &host, &process.name, tail, follow, json).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a process's log lines from `host`'s agent (following while `follow`): plain lines, the
/// agent's own notes prefixed `[agent]`, or one JSON object `{host, process, stream, line}` each.
pub async fn print_agent_logs(
    fleet: &Fleet,
    host: &str,
    name: &str,
    tail: u32,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client = fleet.connect(fleet.config.host(host)?).await?;
    let mut stream = client.logs(name, tail, follow).await?;
    while let Some(reply) = stream
        .next_reply()
        .await
        .with_context(|| format!("logs of {name} on {host}"))?
    {
        if let Reply::LogLines(lines) = reply {
            for line in lines {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "host": host, "process": name, "stream": line.stream, "line": line.line,
                        })
                    );
                    continue;
                }
                match line.stream {
                    LogStream::Supervisor => println!("[agent] {}", line.line),
                    _ => println!("{}", line.line),
                }
            }
        }
    }
    Ok(())
}
