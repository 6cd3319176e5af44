//! `tightwad swap MODEL`: put another model into one supervised llama-server (a pairing's target,
//! or an RPC pool's coordinator) without touching the other hosts and without losing a request.
//!
//! The steps, each of which must succeed before the next:
//! 1. find MODEL on the process's host (`FindModel`; a path with a `/` is taken as it is);
//! 2. drain the pairing at the proxy (`POST /v1/tightwad/pairings/{name}/drain`, API key
//!    applies): the proxy holds new requests and answers once the in-flight ones are done;
//! 3. restart the process through its agent with the same arguments but `-m MODEL` (stop, then
//!    start, which waits for `/health`); RPC workers and every other process keep running;
//! 4. resume the pairing (`…/resume`): held requests go on against the new model, and the
//!    pairing re-probes its target (vocabulary, context, drafters) before the next one.
//!
//! If the new model does not start, the old arguments are started again, and the pairing is
//! resumed either way: a failed swap never leaves clients waiting. Without `--pairing` (an RPC
//! coordinator no proxy fronts) there is nothing to drain and steps 2 and 4 are skipped.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::cluster::Fleet;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  tightwad swap qwen3-8b-q8_0.gguf --pairing qwen --process gpu-box/target\n  tightwad swap /models/llama-70b-q4.gguf --process gpu-box/pool-coordinator --json"
)]
pub struct SwapArgs {
    /// The new model: a file name found in the host's model folders, or a path on that host.
    pub model: String,
    /// The supervised process to restart with it, as HOST/NAME (`[[hosts]]` name, process name),
    /// or NAME when only one host has a process of that name.
    #[arg(long, value_name = "HOST/NAME")]
    pub process: String,
    /// The proxy pairing served by that process: drained before the restart, resumed after.
    #[arg(long)]
    pub pairing: Option<String>,
    /// The proxy's URL (default: http:// + the config's `listen`).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// API key for the proxy (default: TIGHTWAD_API_KEY, else the config's first `api_keys`).
    #[arg(long, env = "TIGHTWAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Longest wait for in-flight requests to finish, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub drain_timeout: u64,
    /// Print the report as JSON (no progress lines).
    #[arg(long)]
    pub json: bool,
}

/// What a swap did.
#[derive(Debug, Serialize)]
pub struct SwapReport {
    pub host: String,
    pub process: String,
    pub pairing: Option<String>,
    pub old_model: Option<String>,
    pub new_model: String,
    /// How long in-flight requests took to finish.
    pub drain_ms: Option<u64>,
    /// From the drain (or the stop) to the new server being ready.
    pub swap_ms: u64,
    pub port: Option<u16>,
}

/// The proxy endpoint and key the swap drains through.
struct ProxyAdmin {
    url: String,
    key: Option<String>,
    http: reqwest::Client,
}

impl ProxyAdmin {
    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url.trim_end_matches('/')))
            .json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the proxy at {}", self.url))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or("no details");
            bail!("the proxy answered {status} to {path}: {msg}");
        }
        Ok(v)
    }
}

/// The model argument's index (the value after `-m`/`--model`, or inside `--model=…`).
fn model_arg(args: &[String]) -> Option<(usize, bool)> {
    for (i, a) in args.iter().enumerate() {
        if (a == "-m" || a == "--model") && i + 1 < args.len() {
            return Some((i + 1, false));
        }
        if a.starts_with("--model=") {
            return Some((i, true));
        }
    }
    None
}

/// `args` with the model replaced by `model`; the old model.
pub fn replace_model(args: &[String], model: &str) -> anyhow::Result<(Vec<String>, String)> {
    let (i, inline) = model_arg(args).context(
        "the process's arguments name no model (-m/--model): it cannot be swapped; configure it with -m",
    )?;
    let mut new = args.to_vec();
    let old = if inline {
        let old = args[i].trim_start_matches("--model=").to_string();
        new[i] = format!("--model={model}");
        old
    } else {
        let old = args[i].clone();
        new[i] = model.to_string();
        old
    };
    Ok((new, old))
}

fn proxy_admin(args: &SwapArgs, config: &Path) -> anyhow::Result<ProxyAdmin> {
    let file: toml::Table = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| toml::from_str(&t).ok())
        .unwrap_or_default();
    let url = match &args.proxy {
        Some(u) => u.clone(),
        None => {
            let listen = file.get("listen").and_then(|v| v.as_str()).context(
                "--pairing needs the proxy's address: pass --proxy URL or set `listen` in the config",
            )?;
            let addr: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("`listen` = {listen:?} in {}", config.display()))?;
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            format!("http://{host}:{}", addr.port())
        }
    };
    let key = args.api_key.clone().or_else(|| {
        file.get("api_keys")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    Ok(ProxyAdmin {
        url,
        key,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(args.drain_timeout + 30))
            .build()?,
    })
}

/// Run a swap; see the module docs. Each step shows on stderr (a spinner on a terminal, a line on
/// a pipe, nothing with `--json`).
pub async fn run(fleet: &Fleet, args: &SwapArgs, config: &Path) -> anyhow::Result<SwapReport> {
    let total = if args.pairing.is_some() { 4 } else { 2 };
    let mut steps =
        crate::progress::Steps::new(crate::progress::Progress::mode(args.json), "swap", total);
    let (named, _) = super::naming::ProcessName::parse(&args.process, None)
        .context("--process takes HOST/NAME, e.g. gpu-box/target")?;
    let host_name = named.host(fleet).await?;
    let (host_name, process) = (host_name.as_str(), named.name.as_str());
    let host = fleet.config.host(host_name)?;
    steps.step(format!("finding {} on {host_name}", args.model));
    let client = fleet.connect(host).await?;
    let model_path = if args.model.contains('/') {
        args.model.clone()
    } else {
        let found = client
            .find_model(&args.model)
            .await
            .with_context(|| format!("looking for {} on {host_name}", args.model))?;
        match found.first() {
            Some(m) => m.path.clone(),
            None => bail!(
                "{host_name} has no {} in its model folders: copy it there first (tightwad models copy {} --to {host_name})",
                args.model,
                args.model
            ),
        }
    };
    let status = client.status().await?;
    let current = status
        .processes
        .iter()
        .find(|p| p.name == process)
        .with_context(|| {
            let names: Vec<&str> = status.processes.iter().map(|p| p.name.as_str()).collect();
            format!(
                "{host_name} supervises no process {process:?} (it has: {})",
                names.join(", ")
            )
        })?;
    let old_args = current.args.clone();
    if old_args.is_empty() {
        bail!("{process} on {host_name} is not running: start it (tightwad agent start {host_name}/{process} -- -m {model_path} ...) instead of swapping");
    }
    let (new_args, old_model) = replace_model(&old_args, &model_path)?;

    let admin = match &args.pairing {
        Some(_) => Some(proxy_admin(args, config)?),
        None => None,
    };
    let started = Instant::now();
    let mut drain_ms = None;
    if let (Some(admin), Some(pairing)) = (&admin, &args.pairing) {
        steps.step(format!(
            "draining pairing {pairing} at {} (in-flight requests finish)",
            admin.url
        ));
        let v = admin
            .post(
                &format!("/v1/tightwad/pairings/{pairing}/drain"),
                json!({"timeout_s": args.drain_timeout, "hold_s": args.drain_timeout + 600}),
            )
            .await
            .with_context(|| format!("draining pairing {pairing}"))?;
        drain_ms = v["waited_ms"].as_u64();
        tracing::info!(pairing, ?drain_ms, "drained");
    }
    steps.step(format!(
        "restarting {host_name}/{process} with {model_path} and waiting until it is ready"
    ));
    let restarted = restart_with(&client, process, &new_args).await;
    let outcome = match restarted {
        Ok(s) => Ok(s),
        Err(e) => {
            // Put the old model back so the pairing keeps serving, then report the failure.
            let back = restart_with(&client, process, &old_args).await;
            Err(match back {
                Ok(_) => e.context(format!(
                    "{model_path} did not start; {process} runs {old_model} again"
                )),
                Err(e2) => e.context(format!(
                    "{model_path} did not start, and restarting {old_model} failed too: {e2:#}"
                )),
            })
        }
    };
    if let (Some(admin), Some(pairing)) = (&admin, &args.pairing) {
        steps.step(format!("resuming pairing {pairing}"));
        admin
            .post(
                &format!("/v1/tightwad/pairings/{pairing}/resume"),
                json!({}),
            )
            .await
            .with_context(|| {
                format!("resuming pairing {pairing} (it resumes by itself when its drain expires)")
            })?;
    }
    let status = outcome?;
    steps.finish(format!("{host_name}/{process} runs {model_path}"));
    Ok(SwapReport {
        host: host_name.to_string(),
        process: process.to_string(),
        pairing: args.pairing.clone(),
        old_model: Some(old_model),
        new_model: model_path,
        drain_ms,
        swap_ms: started.elapsed().as_millis() as u64,
        port: status.port,
    })
}

async fn restart_with(
    client: &tightwad_protocol::client::Client,
    process: &str,
    args: &[String],
) -> anyhow::Result<tightwad_protocol::messages::ProcessStatus> {
    client
        .stop_process(process)
        .await
        .with_context(|| format!("stopping {process}"))?;
    client
        .start_process(process, Some(args.to_vec()))
        .await
        .with_context(|| format!("starting {process} with {}", args.join(" ")))
}

/// The report for people.
pub fn render(r: &SwapReport) -> String {
    format!(
        "{}/{}: {} → {} in {:.1} s{}{}\n",
        r.host,
        r.process,
        r.old_model.as_deref().unwrap_or("?"),
        r.new_model,
        r.swap_ms as f64 / 1000.0,
        r.pairing
            .as_ref()
            .map(|p| format!(", pairing {p} drained and resumed"))
            .unwrap_or_default(),
        r.drain_ms
            .map(|d| format!(" (in-flight requests took {d} ms)"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_argument_is_replaced_in_every_spelling() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let (new, old) = replace_model(&s(&["-m", "/a.gguf", "--port", "8"]), "/b.gguf").unwrap();
        assert_eq!(
            (new, old),
            (s(&["-m", "/b.gguf", "--port", "8"]), "/a.gguf".into())
        );
        let (new, _) = replace_model(&s(&["--model=/a.gguf"]), "/b.gguf").unwrap();
        assert_eq!(new, s(&["--model=/b.gguf"]));
        let e = replace_model(&s(&["--port", "8"]), "/b.gguf").unwrap_err();
        assert!(e.to_string().contains("-m"), "{e}");
    }
}
