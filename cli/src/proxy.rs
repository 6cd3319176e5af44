//! `tightwad proxy`: its flags, how they layer over the config file and the environment, and
//! serving with reload on SIGHUP; `tightwad reload` asks a running proxy to reload.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tightwad_serve::config::{FlagOverrides, Loaded, ProxyConfig};
use tightwad_serve::engine::VerifyMode;
use tightwad_serve::server::Proxy;

/// Flags of `tightwad proxy`. Those that set a pairing's field (`--target`, `--draft`,
/// `--model`, `--draft-tokens`, …) act on the config's single pairing, changing only that field;
/// with several pairings in the file they are refused (see `config::layers`).
#[derive(clap::Args, Debug)]
pub struct ProxyArgs {
    /// Target server URL (the big model whose output clients get). Over a file's pairing it
    /// replaces only the target; the file's draft and settings stay.
    #[arg(long, env = "TIGHTWAD_TARGET")]
    target: Option<String>,
    /// Draft server URL (a small model with the same vocabulary), or `prompt-lookup` to draft
    /// from the context itself. Without it (and none in the file): target-only.
    #[arg(long, env = "TIGHTWAD_DRAFT")]
    draft: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8088]. Anything but loopback needs API keys
    /// (`api_keys` in the file, --api-key or TIGHTWAD_API_KEY), or the proxy warns loudly.
    #[arg(long, env = "TIGHTWAD_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Model name clients ask for [default: tightwad].
    #[arg(long, alias = "model-name")]
    model: Option<String>,
    /// Most draft tokens per round (k, 1 to 8) [default: 8 on a target that verifies a draft in
    /// one pass (Tightwad's llama.cpp patch), else 4; a stock target needs -np k+1].
    #[arg(long)]
    draft_tokens: Option<usize>,
    /// A draft ends after a token the draft model gave less than this probability, 0 to 1 (0:
    /// drafts run to k) [default: 0]. Needs the bundled llama.cpp patch on the draft server.
    #[arg(long)]
    draft_p_min: Option<f64>,
    /// Draft servers sample on their device (llama-server's backend_sampling). Measured slower
    /// with the pinned llama.cpp, GPU and CPU alike; for builds that keep the device sampler
    /// between requests. Not with --draft-p-min above 0.
    #[arg(long)]
    draft_backend_sampling: bool,
    /// Never speculate while the target alone is faster than this (tokens/s); needs the
    /// adaptive controller (not with --no-adaptive).
    #[arg(long)]
    disable_above_tok_s: Option<f64>,
    /// While the draft server is down, draft from the context itself (prompt lookup).
    #[arg(long)]
    prompt_lookup_fallback: bool,
    /// The target runs llama.cpp's own speculation (`-md` with the draft on a remote rpc-server);
    /// the proxy steers how many tokens it drafts per request. With --draft as well, each request
    /// takes whichever path (proxy rounds or native) has been delivering more tokens/s.
    #[arg(long)]
    native: bool,
    /// Speculate every round with --draft-tokens, even where the controller would switch it off.
    #[arg(long)]
    no_adaptive: bool,
    /// How the target verifies drafts: `auto` (one pass when the target's llama-server has the
    /// bundled patch, else one prompt per position), `one-pass`, or `multi-prompt`.
    #[arg(long, value_enum)]
    verify: Option<VerifyArg>,
    /// An API key clients must send as `Authorization: Bearer KEY` (adds to the file's keys).
    #[arg(long, env = "TIGHTWAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Log format on stderr: `text` for people, `json` for journald/log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TIGHTWAD_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum VerifyArg {
    Auto,
    OnePass,
    MultiPrompt,
}

impl From<VerifyArg> for VerifyMode {
    fn from(v: VerifyArg) -> Self {
        match v {
            VerifyArg::Auto => VerifyMode::Auto,
            VerifyArg::OnePass => VerifyMode::OnePass,
            VerifyArg::MultiPrompt => VerifyMode::MultiPrompt,
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

impl ProxyArgs {
    fn overrides(&self) -> FlagOverrides {
        FlagOverrides {
            listen: self.listen,
            api_key: self.api_key.clone(),
            target: self.target.clone(),
            draft: self.draft.clone(),
            model: self.model.clone(),
            draft_tokens: self.draft_tokens,
            draft_p_min: self.draft_p_min,
            draft_backend_sampling: self.draft_backend_sampling,
            disable_above_tok_s: self.disable_above_tok_s,
            prompt_lookup_fallback: self.prompt_lookup_fallback,
            native: self.native,
            no_adaptive: self.no_adaptive,
            verify: self.verify.map(Into::into),
        }
    }
}

/// stderr in the chosen format, plus the in-memory ring `tightwad logs proxy` reads
/// (`tightwad_serve::logring`), always plain text.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ring = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(tightwad_serve::logring::make);
    let registry = tracing_subscriber::registry().with(filter).with(ring);
    if format == LogFormat::Json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .init();
    } else {
        // Colour only on a terminal: piped into a file or journald, escape codes are noise.
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init();
    }
}

/// Old flag spellings still accepted (hidden aliases), found on the command line to warn.
const OLD_FLAGS: &[(&str, &str)] = &[("--model-name", "--model")];

fn old_flag_warnings() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    OLD_FLAGS
        .iter()
        .filter(|(old, _)| {
            args.iter()
                .any(|a| a == old || a.starts_with(&format!("{old}=")))
        })
        .map(|(old, new)| format!("{old} is deprecated; use {new}"))
        .collect()
}

/// The three layers (file, `TIGHTWAD_*`, flags), checked.
fn resolve(file: Option<&Path>, flags: &FlagOverrides) -> anyhow::Result<Loaded> {
    let loaded = ProxyConfig::resolve(file, flags)?;
    Ok(loaded)
}

/// `tightwad proxy`: serve until SIGTERM/Ctrl-C; SIGHUP reloads the pairings (adds, removes,
/// changes them).
pub async fn run(args: ProxyArgs, config_flag: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    // `-c FILE`, else `./tightwad.toml` when there is one, like the other commands.
    let default = PathBuf::from("tightwad.toml");
    let file = config_flag.or_else(|| default.is_file().then(|| default.clone()));
    let flags = args.overrides();
    let loaded = resolve(file.as_deref(), &flags).map_err(|e| match file {
        Some(_) => e,
        None => e.context(tightwad_coordinator::cluster::config::missing_config(
            &default,
        )),
    })?;
    for warning in old_flag_warnings().iter().chain(&loaded.warnings) {
        tracing::warn!("{warning}");
    }
    let config = loaded.config;
    let proxy = Proxy::bind(&config).await?;
    tightwad_coordinator::hosts_view::attach(&proxy, &config);
    let reread_file = file.clone();
    proxy.enable_reload(
        Arc::new(move || resolve(reread_file.as_deref(), &flags).map_err(|e| format!("{e:#}"))),
        config,
    );
    spawn_reload_on_hangup(proxy.handle());
    // Under systemd (`Type=notify`): ready, the socket listens and serving starts now;
    // the targets are checked in the background (`/health` says how they are).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    proxy
        .serve(shutdown_signal())
        .await
        .context("proxy stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload tightwad`, `kill -HUP`) re-reads the configuration; the outcome is
/// logged by the reload itself.
fn spawn_reload_on_hangup(handle: tightwad_serve::server::ProxyHandle) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: reload with `tightwad reload` instead");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let handle = handle.clone();
            let _ = tokio::task::spawn_blocking(move || handle.reload()).await;
        }
    });
    #[cfg(not(unix))]
    let _ = handle;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// `tightwad reload`: ask the proxy to re-read its configuration (what SIGHUP does).
#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    /// The proxy's URL [default: the config's `listen`, else http://127.0.0.1:8088].
    #[arg(long)]
    proxy: Option<String>,
    /// Print the proxy's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn reload(args: ReloadArgs, config_flag: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let url = match args.proxy {
        Some(url) => url,
        None => {
            let file = config_flag.unwrap_or_else(|| PathBuf::from("tightwad.toml"));
            let listen = if file.is_file() {
                ProxyConfig::load(&file)?.listen
            } else {
                ProxyConfig::default().listen
            };
            // A proxy on every address answers on loopback.
            let host = if listen.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                listen.ip().to_string()
            };
            format!("http://{host}:{}", listen.port())
        }
    };
    let mut request =
        reqwest::Client::new().post(format!("{}/v1/tightwad/reload", url.trim_end_matches('/')));
    if let Ok(key) = std::env::var("TIGHTWAD_API_KEY") {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the proxy at {url} (pass --proxy URL)"))?;
    let ok = response.status().is_success();
    let body: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("the proxy at {url} answered without JSON"))?;
    if !ok {
        anyhow::bail!(
            "{}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("the proxy refused the reload")
        );
    }
    if args.json {
        println!("{body:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = |key: &str| {
        body[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "reloaded: added [{}], removed [{}], changed [{}], unchanged [{}]",
        list("added"),
        list("removed"),
        list("changed"),
        list("unchanged")
    );
    for w in body["warnings"].as_array().into_iter().flatten() {
        if let Some(w) = w.as_str() {
            println!("warning: {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tightwad config schema`: the JSON Schema of `tightwad.toml`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the JSON Schema of tightwad.toml (shipped as dist/schema/tightwad.schema.json);
    /// the agent's is `tightwad-agent --print-schema`.
    #[command(
        after_long_help = "Examples:\n  tightwad config schema > tightwad.schema.json\n  # then start tightwad.toml with:  #:schema ./tightwad.schema.json"
    )]
    Schema,
}

pub fn config(cmd: ConfigCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Schema => {
            print!("{}", tightwad_serve::config::schema::proxy_schema_json());
            Ok(ExitCode::SUCCESS)
        }
    }
}
