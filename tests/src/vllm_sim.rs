//! A SIMULATION of vLLM's OpenAI-compatible server, for FAULT tests only (the real vLLM is tested
//! in `tests/tests/vllm.rs`). It answers the documented request and response shapes the proxy
//! uses — `/v1/models`, `/version`, `/tokenizer_info`, `/tokenize`, `/detokenize`, `/health` and
//! `/v1/completions` with token-id prompts, `prompt_logprobs`, several prompts, `stream` — with a
//! deterministic toy model (one token per byte, next token a fixed function of the last two), and
//! can be told to misbehave: malformed JSON, partial replies, a stream cut off as by a restart.
//! It is not vLLM and proves nothing about vLLM's numerics.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The toy vocabulary: ids 0..=255 are bytes, 256 ends a sequence.
pub const SIM_EOS: u64 = 256;

/// How the simulation misbehaves from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    None,
    /// `/v1/completions` answers 200 with a body that is not JSON.
    MalformedCompletions,
    /// `prompt_logprobs` comes back one position short.
    ShortPromptLogprobs,
    /// Non-streamed completions miss their `token_ids`.
    NoTokenIds,
    /// A stream sends this many chunks, then the connection drops (a vLLM restarting mid-answer).
    StreamCutAfter(usize),
    /// Every `/v1/completions` answers 503, as a vLLM still loading after a restart.
    Unavailable,
}

/// A running simulation on a loopback port; stops when dropped.
pub struct VllmSimulation {
    pub url: String,
    fault: Arc<Mutex<SimFault>>,
    task: tokio::task::JoinHandle<()>,
}

impl VllmSimulation {
    pub async fn start() -> VllmSimulation {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the simulation");
        let addr = listener.local_addr().expect("simulation address");
        let fault = Arc::new(Mutex::new(SimFault::None));
        let shared = fault.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let fault = *shared.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(serve(sock, fault));
            }
        });
        VllmSimulation {
            url: format!("http://{addr}"),
            fault,
            task,
        }
    }

    pub fn set_fault(&self, f: SimFault) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// The simulation's own greedy continuation (what the proxy must reproduce).
    pub fn greedy(prompt: &str, max_tokens: usize) -> Vec<u64> {
        let mut ctx = tokenize(prompt);
        let mut out = Vec::new();
        while out.len() < max_tokens {
            let t = next_token(&ctx);
            out.push(t);
            ctx.push(t);
            if t == SIM_EOS {
                break;
            }
        }
        out
    }
}

impl Drop for VllmSimulation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tokenize(text: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("</s>") {
            out.push(SIM_EOS);
            rest = r;
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next().unwrap_or_default();
        out.extend(c.to_string().bytes().map(u64::from));
        rest = chars.as_str();
    }
    out
}

fn detokenize(ids: &[u64]) -> String {
    let mut bytes = Vec::new();
    for &id in ids {
        if id == SIM_EOS {
            bytes.extend_from_slice(b"</s>");
        } else if id < 256 {
            bytes.push(id as u8);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The toy model: lowercase letters and spaces from the last two tokens; a sequence ends after a
/// period that follows 'q'.
fn next_token(ctx: &[u64]) -> u64 {
    let a = ctx.last().copied().unwrap_or(0);
    let b = ctx.len().checked_sub(2).map_or(0, |i| ctx[i]);
    if a == u64::from(b'.') && b == u64::from(b'q') {
        return SIM_EOS;
    }
    let v = (a * 31 + b * 7 + 13) % 29;
    match v {
        26 | 27 => u64::from(b' '),
        28 => u64::from(b'.'),
        n => u64::from(b'a') + n,
    }
}

fn piece(id: u64) -> String {
    detokenize(&[id])
}

async fn serve(mut sock: TcpStream, fault: SimFault) {
    let Some((method, path, body)) = read_request(&mut sock).await else {
        return;
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (status, reply) = match (method.as_str(), path.as_str()) {
        ("GET", "/health") => (200, json!({})),
        ("GET", "/version") => (200, json!({"version": "0.0.0-simulation"})),
        ("GET", "/tokenizer_info") => (
            200,
            json!({"tokenizer_class": "Simulation", "eos_token": "</s>"}),
        ),
        ("GET", "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": "sim", "object": "model", "max_model_len": 4096}]}),
        ),
        ("POST", "/tokenize") => {
            let tokens = match (body.get("prompt"), body.get("messages")) {
                (Some(Value::String(p)), _) => tokenize(p),
                (_, Some(Value::Array(msgs))) => {
                    let text: String = msgs
                        .iter()
                        .map(|m| {
                            format!(
                                "{}: {}\n",
                                m["role"].as_str().unwrap_or(""),
                                m["content"].as_str().unwrap_or("")
                            )
                        })
                        .collect::<String>()
                        + "assistant:";
                    tokenize(&text)
                }
                _ => {
                    return respond(
                        &mut sock,
                        400,
                        &json!({"error": {"message": "bad tokenize request"}}),
                    )
                    .await
                }
            };
            (
                200,
                json!({"count": tokens.len(), "max_model_len": 4096, "tokens": tokens}),
            )
        }
        ("POST", "/detokenize") => {
            let ids: Vec<u64> = serde_json::from_value(body["tokens"].clone()).unwrap_or_default();
            (200, json!({"prompt": detokenize(&ids)}))
        }
        ("POST", "/v1/completions") => {
            if fault == SimFault::Unavailable {
                (503, json!({"error": {"message": "engine is starting"}}))
            } else if fault == SimFault::MalformedCompletions {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"choices")
                    .await;
                return;
            } else if body["stream"] == true {
                return stream_completion(&mut sock, &body, fault).await;
            } else {
                completions(&body, fault)
            }
        }
        _ => (
            404,
            json!({"error": {"message": format!("no route {path}")}}),
        ),
    };
    respond(&mut sock, status, &reply).await;
}

fn prompts_of(body: &Value) -> Option<Vec<Vec<u64>>> {
    match &body["prompt"] {
        Value::Array(items) if items.iter().all(Value::is_array) => items
            .iter()
            .map(|p| serde_json::from_value(p.clone()).ok())
            .collect(),
        p @ Value::Array(_) => Some(vec![serde_json::from_value(p.clone()).ok()?]),
        Value::String(s) => Some(vec![tokenize(s)]),
        _ => None,
    }
}

fn generate(prompt: &[u64], max_tokens: usize) -> (Vec<u64>, &'static str) {
    let mut ctx = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < max_tokens {
        let t = next_token(&ctx);
        out.push(t);
        ctx.push(t);
        if t == SIM_EOS {
            return (out, "stop");
        }
    }
    (out, "length")
}

fn completions(body: &Value, fault: SimFault) -> (u16, Value) {
    let Some(prompts) = prompts_of(body) else {
        return (
            400,
            json!({"error": {"message": "prompt must be token ids or text"}}),
        );
    };
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let want_prompt_logprobs = body["prompt_logprobs"].as_u64().is_some();
    let choices: Vec<Value> = prompts
        .iter()
        .enumerate()
        .map(|(index, prompt)| {
            let (ids, finish) = generate(prompt, max_tokens);
            let mut choice = json!({
                "index": index, "text": detokenize(&ids), "logprobs": null,
                "finish_reason": finish, "stop_reason": null,
            });
            if fault != SimFault::NoTokenIds {
                choice["token_ids"] = json!(ids);
            }
            if want_prompt_logprobs {
                let mut entries = vec![Value::Null];
                for j in 1..prompt.len() {
                    let best = next_token(&prompt[..j]);
                    let mut e = serde_json::Map::new();
                    e.insert(
                        prompt[j].to_string(),
                        json!({"logprob": if prompt[j] == best { -0.1 } else { -5.0 }, "rank": if prompt[j] == best { 1 } else { 2 }, "decoded_token": piece(prompt[j])}),
                    );
                    e.insert(
                        best.to_string(),
                        json!({"logprob": -0.1, "rank": 1, "decoded_token": piece(best)}),
                    );
                    entries.push(Value::Object(e));
                }
                if fault == SimFault::ShortPromptLogprobs {
                    entries.pop();
                }
                choice["prompt_logprobs"] = json!(entries);
            }
            choice
        })
        .collect();
    (
        200,
        json!({"id": "cmpl-sim", "object": "text_completion", "model": "sim", "choices": choices,
               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}),
    )
}

async fn stream_completion(sock: &mut TcpStream, body: &Value, fault: SimFault) {
    let Some(prompts) = prompts_of(body) else {
        respond(sock, 400, &json!({"error": {"message": "bad prompt"}})).await;
        return;
    };
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    let (ids, finish) = generate(&prompts[0], max_tokens);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for (i, id) in ids.iter().enumerate() {
        if fault == SimFault::StreamCutAfter(i) {
            // Dropped without a finish_reason or [DONE]: the server went away mid-answer.
            return;
        }
        let last = i + 1 == ids.len();
        let chunk = json!({"id": "cmpl-sim", "object": "text_completion", "model": "sim", "choices": [{
            "index": 0, "text": piece(*id), "token_ids": [id],
            "finish_reason": if last { json!(finish) } else { Value::Null }, "stop_reason": null,
        }]});
        if sock
            .write_all(format!("data: {chunk}\n\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = sock.write_all(b"data: [DONE]\n\n").await;
}

async fn respond(sock: &mut TcpStream, status: u16, body: &Value) {
    let text = body.to_string();
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        text.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(text.as_bytes()).await;
}

/// Read one HTTP/1.1 request (headers, then `content-length` bytes of body).
async fn read_request(sock: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[header_end..].to_vec();
    while body.len() < length {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((method, path, body))
}
