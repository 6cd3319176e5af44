//! `tightwad chat [--direct]`: talk to the model from a terminal and see, after every reply, what
//! speculation did for it: rounds, tokens drafted and accepted, tokens per round, tokens/s.
//!
//! It streams `/v1/chat/completions` through the proxy (or, with `--direct`, straight from the
//! target's llama-server, to compare) and keeps the conversation. The figures come from the
//! proxy's own per-request report: the `tightwad` object of the final stream chunk
//! (`served_by`, `rounds`, `drafted`, `accepted`, `elapsed_ms`) and the `usage` chunk that
//! `stream_options.include_usage` asks for. OpenAI SDKs ignore the extra field.
//!
//! Input is read a line at a time from stdin (a terminal's line editing applies; no history
//! file), so it works the same on a terminal, through a pty and from a pipe. `/exit`, `/quit` or
//! end of input (Ctrl-D) leave; `/reset` forgets the conversation.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// Talk to the target's llama-server directly (the config's first pairing, or --target),
    /// bypassing the proxy: the baseline to compare the figures with.
    #[arg(long)]
    pub direct: bool,
    /// The proxy's URL (default: from the config's `listen`, else http://127.0.0.1:8088).
    #[arg(long = "proxy", value_name = "URL")]
    pub proxy_url: Option<String>,
    /// The target's URL for --direct (default: the config's first pairing's `target`).
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// The model (pairing) name to ask for (default: the config's first pairing, or "tightwad").
    #[arg(long)]
    pub model: Option<String>,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Largest reply, in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling temperature (0: greedy, the same text the target alone would write).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// The proxy's API key, when it has any (default: the config's first `api_keys` entry).
    #[arg(long, env = "TIGHTWAD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The keys of the coordinator config `chat` reads.
#[derive(Deserialize, Default)]
struct ChatConfig {
    listen: Option<String>,
    #[serde(default)]
    api_keys: Vec<String>,
    #[serde(default)]
    pairings: Vec<PairingKeys>,
}

#[derive(Deserialize)]
struct PairingKeys {
    name: Option<String>,
    target: Option<String>,
}

fn read_config(path: &Path) -> anyhow::Result<ChatConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ChatConfig::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What one reply cost, for the line printed after it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    pub completion_tokens: Option<u64>,
    pub served_by: Option<String>,
    pub rounds: Option<u64>,
    pub drafted: Option<u64>,
    pub accepted: Option<u64>,
    pub seconds: f64,
    /// Content chunks received (the token count when the server sent no usage).
    pub chunks: u64,
}

impl Figures {
    /// Reads what a stream chunk says about the request (usage, the proxy's `tightwad` object).
    pub fn absorb(&mut self, chunk: &Value) {
        if let Some(n) = chunk
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
        {
            self.completion_tokens = Some(n);
        }
        if let Some(t) = chunk.get("tightwad") {
            self.served_by = t
                .get("served_by")
                .and_then(Value::as_str)
                .map(str::to_string);
            self.rounds = t.get("rounds").and_then(Value::as_u64);
            self.drafted = t.get("drafted").and_then(Value::as_u64);
            self.accepted = t.get("accepted").and_then(Value::as_u64);
        }
    }

    /// One line: `[42 tokens, 3.1 s, 13.5 tok/s | 12 rounds, 40 drafted, 30 accepted (75%), 3.5 tokens/round]`.
    pub fn render(&self) -> String {
        let tokens = self.completion_tokens.unwrap_or(self.chunks);
        let rate = if self.seconds > 0.0 {
            tokens as f64 / self.seconds
        } else {
            0.0
        };
        let mut line = format!("[{tokens} tokens, {:.1} s, {rate:.1} tok/s", self.seconds);
        match (self.rounds, self.drafted, self.accepted) {
            (Some(rounds), Some(drafted), Some(accepted)) => {
                let acceptance = if drafted > 0 {
                    format!(" ({:.0}%)", 100.0 * accepted as f64 / drafted as f64)
                } else {
                    String::new()
                };
                let per_round = if rounds > 0 {
                    tokens as f64 / rounds as f64
                } else {
                    0.0
                };
                line.push_str(&format!(
                    " | {rounds} rounds, {drafted} drafted, {accepted} accepted{acceptance}, {per_round:.1} tokens/round"
                ));
                if let Some(by) = &self.served_by {
                    line.push_str(&format!(", {by}"));
                }
            }
            _ => line.push_str(" | direct, no speculation"),
        }
        line.push(']');
        line
    }
}

/// Where requests go and how.
struct Endpoint {
    url: String,
    model: Option<String>,
    key: Option<String>,
}

fn endpoint(args: &ChatArgs, config: &Path) -> anyhow::Result<Endpoint> {
    let file = read_config(config)?;
    let first = file.pairings.first();
    if args.direct {
        let url = args
            .target
            .clone()
            .or_else(|| first.and_then(|p| p.target.clone()))
            .context("--direct needs the target's URL: pass --target URL or a config with a [[pairings]] target")?;
        return Ok(Endpoint {
            url: url.trim_end_matches('/').to_string(),
            // llama-server serves the one model it loaded, whatever the name.
            model: args.model.clone(),
            key: None,
        });
    }
    let url = match (&args.proxy_url, &file.listen) {
        (Some(url), _) => url.trim_end_matches('/').to_string(),
        (None, Some(listen)) => crate::fleet::logs::url_from_listen(listen),
        (None, None) => "http://127.0.0.1:8088".to_string(),
    };
    Ok(Endpoint {
        url,
        model: Some(
            args.model
                .clone()
                .or_else(|| first.and_then(|p| p.name.clone()))
                .unwrap_or_else(|| "tightwad".into()),
        ),
        key: args.api_key.clone().or(file.api_keys.first().cloned()),
    })
}

/// The error message of an OpenAI-shaped error body, or the body itself.
fn error_message(status: reqwest::StatusCode, body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string());
    format!("{status}: {message}")
}

/// Sends the conversation, prints the reply as it streams, returns its text and figures.
async fn ask(
    http: &reqwest::Client,
    endpoint: &Endpoint,
    args: &ChatArgs,
    messages: &[Value],
    out: &mut impl Write,
) -> anyhow::Result<(String, Figures)> {
    let mut body = json!({
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    });
    if let Some(model) = &endpoint.model {
        body["model"] = json!(model);
    }
    let mut request = http
        .post(format!("{}/v1/chat/completions", endpoint.url))
        .json(&body);
    if let Some(key) = &endpoint.key {
        request = request.bearer_auth(key);
    }
    let started = Instant::now();
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach {}", endpoint.url))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!("{}", error_message(status, &text));
    }
    let mut figures = Figures::default();
    let mut reply = String::new();
    let mut pending = Vec::<u8>::new();
    let mut stream = response.bytes_stream();
    let mut done = false;
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.context("the reply stream broke off")?;
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(message) = chunk.pointer("/error/message").and_then(Value::as_str) {
                anyhow::bail!("the server stopped the reply: {message}");
            }
            if let Some(text) = chunk
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                if !text.is_empty() {
                    figures.chunks += 1;
                    reply.push_str(text);
                    write!(out, "{text}")?;
                    out.flush()?;
                }
            }
            figures.absorb(&chunk);
        }
    }
    anyhow::ensure!(done, "the reply stream ended without [DONE]");
    figures.seconds = started.elapsed().as_secs_f64();
    Ok((reply, figures))
}

/// The chat loop: a prompt, a line, the streamed reply, the figures; until `/exit` or EOF.
pub async fn run(args: ChatArgs, config: &Path) -> anyhow::Result<ExitCode> {
    let endpoint = endpoint(&args, config)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    let mut stdout = std::io::stdout();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    eprintln!(
        "chatting with {}{} (/exit or Ctrl-D to leave, /reset to start over)",
        endpoint.url,
        if args.direct { " directly" } else { "" }
    );
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let Some(line) = lines.next_line().await.context("reading input")? else {
            writeln!(stdout)?;
            break;
        };
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.retain(|m| m["role"] == "system");
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        match ask(&http, &endpoint, &args, &messages, &mut stdout).await {
            Ok((reply, figures)) => {
                writeln!(stdout)?;
                writeln!(stdout, "{}", figures.render())?;
                messages.push(json!({"role": "assistant", "content": reply}));
            }
            Err(e) => {
                // The turn is dropped so the next one does not build on a half reply.
                messages.pop();
                writeln!(stdout)?;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_final_chunk_and_usage() {
        let mut f = Figures::default();
        f.absorb(
            &json!({"choices": [{"delta": {}, "finish_reason": "length"}],
            "tightwad": {"served_by": "speculative", "rounds": 4, "drafted": 16, "accepted": 12}}),
        );
        f.absorb(&json!({"choices": [], "usage": {"completion_tokens": 16}}));
        f.seconds = 2.0;
        assert_eq!(
            f.render(),
            "[16 tokens, 2.0 s, 8.0 tok/s | 4 rounds, 16 drafted, 12 accepted (75%), 4.0 tokens/round, speculative]"
        );
        let direct = Figures {
            chunks: 5,
            seconds: 1.0,
            ..Default::default()
        };
        assert_eq!(
            direct.render(),
            "[5 tokens, 1.0 s, 5.0 tok/s | direct, no speculation]"
        );
    }

    #[test]
    fn errors_show_the_openai_message() {
        let m = error_message(
            reqwest::StatusCode::NOT_FOUND,
            r#"{"error": {"message": "model \"x\" not found"}}"#,
        );
        assert_eq!(m, "404 Not Found: model \"x\" not found");
    }
}
