//! `tightwad logs [HOST/]NAME [-f]`: one command for every log of the cluster.
//!
//! - A managed process (`gpu-box/target`, `rpc`, ...): its agent's log buffer over the peer
//!   protocol; with no HOST, every configured host is asked which of them runs a process of that
//!   name (exactly one must, or the command says which to pick).
//! - `proxy`: the proxy's own log, from its in-memory ring (`tightwad_serve::logring`) on the authenticated
//!   `GET /v1/tightwad/logs`; `-f` polls it once a second. The proxy's address comes from `--proxy`
//!   or the config's `listen`, the key from `--api-key`/`TIGHTWAD_API_KEY` or the config's first
//!   `api_keys` entry.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::cluster::Fleet;

#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// The process: HOST/NAME, or NAME when only one host has a process of that name; or
    /// `proxy` for the proxy's own log.
    #[arg(value_name = "[HOST/]NAME")]
    pub process: String,
    /// The NAME of the old two-word spelling `HOST NAME` (deprecated; write HOST/NAME).
    #[arg(hide = true)]
    pub old_name: Option<String>,
    /// Lines of history.
    #[arg(long, short = 'n', default_value_t = 100)]
    pub tail: u32,
    /// Keep printing new lines until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line: `{host, process, stream, line}` (`{seq, line}` for the proxy).
    #[arg(long)]
    pub json: bool,
    /// The proxy's URL for `tightwad logs proxy` (default: from the config's `listen`).
    #[arg(long = "proxy", value_name = "URL")]
    pub proxy_url: Option<String>,
    /// The proxy's API key, when it has any.
    #[arg(long, env = "TIGHTWAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The keys of the coordinator config this command reads (the rest is other commands' business).
#[derive(Deserialize, Default)]
struct ProxyKeys {
    listen: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
}

fn proxy_keys(config: &Path) -> anyhow::Result<ProxyKeys> {
    match std::fs::read_to_string(config) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", config.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ProxyKeys::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", config.display())),
    }
}

/// `listen = "0.0.0.0:8088"` is reached on loopback from the proxy's own machine.
pub fn url_from_listen(listen: &str) -> String {
    let local = listen
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{local}")
}

pub async fn run(fleet: &Fleet, config: &Path, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let (process, warning) =
        super::naming::ProcessName::parse(&args.process, args.old_name.as_deref())?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    if process.host.is_none() && process.name == "proxy" {
        proxy_log(config, &args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let host = process.host(fleet).await?;
    super::print_agent_logs(
        fleet,
        &host,
        &process.name,
        args.tail,
        args.follow,
        args.json,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// The one configured host whose agent supervises a process called `name`.
pub async fn find_host(fleet: &Fleet, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !fleet.config.hosts.is_empty(),
        "no [[hosts]] in the config to look for {name:?} on; name the host: tightwad logs HOST/{name}"
    );
    let asks = fleet.config.hosts.iter().map(|host| async move {
        let result = async {
            let client = fleet.connect(host).await?;
            let status = client.status().await?;
            anyhow::Ok(status.processes.iter().any(|p| p.name == name))
        }
        .await;
        (host.name.clone(), result)
    });
    let answers = futures::future::join_all(asks).await;
    let having: Vec<&String> = answers
        .iter()
        .filter(|(_, r)| matches!(r, Ok(true)))
        .map(|(h, _)| h)
        .collect();
    match having.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let unreachable: Vec<String> = answers
                .iter()
                .filter_map(|(h, r)| r.as_ref().err().map(|e| format!("{h} ({e:#})")))
                .collect();
            let mut message = format!("no reachable host runs a process named {name:?}");
            if !unreachable.is_empty() {
                message.push_str(&format!("; unreachable: {}", unreachable.join(", ")));
            }
            anyhow::bail!("{message}")
        }
        several => anyhow::bail!(
            "{} hosts have a process named {name:?} ({}); name one: tightwad logs HOST/{name}",
            several.len(),
            several
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[derive(Deserialize)]
struct LogsReply {
    lines: Vec<ProxyLine>,
    next: u64,
}

#[derive(Deserialize, serde::Serialize)]
struct ProxyLine {
    seq: u64,
    line: String,
}

async fn proxy_log(config: &Path, args: &LogsArgs) -> anyhow::Result<()> {
    let keys = proxy_keys(config)?;
    let base = match (&args.proxy_url, &keys.listen) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(listen)) => url_from_listen(listen),
        (None, None) => "http://127.0.0.1:8088".to_string(),
    };
    let key = args.api_key.clone().or(keys.api_keys.first().cloned());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut after = 0;
    let mut tail = args.tail as usize;
    loop {
        let mut request = http
            .get(format!("{base}/v1/tightwad/logs"))
            .query(&[("after", after.to_string()), ("tail", tail.to_string())]);
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the proxy at {base} (pass --proxy URL)"))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED {
            anyhow::bail!(
                "the proxy at {base} wants an API key: pass --api-key or set TIGHTWAD_API_KEY"
            );
        }
        anyhow::ensure!(
            status.is_success(),
            "the proxy at {base} answered {status} for its log (is it a tightwad proxy of this version?)"
        );
        let reply: LogsReply = response
            .json()
            .await
            .with_context(|| format!("reading the log from {base}"))?;
        for line in &reply.lines {
            if args.json {
                println!("{}", serde_json::to_string(line)?);
            } else {
                println!("{}", line.line);
            }
        }
        after = reply.next;
        if !args.follow {
            return Ok(());
        }
        tail = tightwad_serve::logring::RING_LINES;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        assert_eq!(url_from_listen("0.0.0.0:8088"), "http://127.0.0.1:8088");
        assert_eq!(url_from_listen("10.0.0.1:80"), "http://10.0.0.1:80");
    }
}
