//! `tightwad-agent --config agent.toml`: one per host.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use tightwad_agent::config::{AgentConfig, AgentFlags};

#[derive(Parser, Debug)]
#[command(
    name = "tightwad-agent",
    version,
    about = "Tightwad agent: remote control of this host's llama.cpp / vLLM servers and model files"
)]
struct Args {
    /// Agent config (TOML); defaults apply without one. Any key can also be set by a
    /// TIGHTWAD_AGENT_<KEY> variable (over the file; flags over both).
    #[arg(long, env = "TIGHTWAD_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `state_dir` (identity, trust list, logs), over the file and
    /// TIGHTWAD_AGENT_STATE_DIR.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Overrides `listen` (UDP address of the QUIC endpoint), over the file and
    /// TIGHTWAD_AGENT_LISTEN.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Join token printed by `tightwad token`: pins the coordinator and lets it enroll this agent.
    #[arg(long, env = "TIGHTWAD_JOIN_TOKEN")]
    join: Option<String>,
    /// With --join: pin the coordinator and keep the token for its first connection, then exit
    /// instead of serving (for an agent that runs as a service: restart the service afterwards).
    #[arg(long, requires = "join")]
    join_only: bool,
    /// Print this agent's certificate fingerprint and exit.
    #[arg(long)]
    print_fingerprint: bool,
    /// Print the JSON Schema of agent.toml (shipped as dist/schema/agent.schema.json) and exit.
    #[arg(long)]
    print_schema: bool,
    /// Log format on stderr: `text` for people (colour only on a terminal), `json` for
    /// journald and log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TIGHTWAD_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,quinn=warn,rustls=warn".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_schema {
        print!("{}", tightwad_agent::config::schema_json());
        return Ok(());
    }
    init_logging(args.log_format);
    // The file, then `TIGHTWAD_AGENT_*`, then these flags (`config::layers`).
    let flags = AgentFlags {
        state_dir: args.state_dir.clone(),
        listen: args.listen,
    };
    let (mut config, warnings) = AgentConfig::load_layered(args.config.as_deref(), &flags)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // A peer refused by `[peer]` is told which file to change.
    config.peer.config_file = args.config.clone();
    if args.join_only {
        let token = args.join.as_deref().unwrap_or_default();
        return tightwad_agent::service::join_only(&config.state_dir, token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(tightwad_agent::service::run(
        config,
        args.config.clone(),
        args.join,
        args.print_fingerprint,
    ))
}
