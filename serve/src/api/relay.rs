//! A request the engine forwarded to the target: its reply relayed under the same response
//! contract as the engine's own answers. The body and every SSE event are the target's, with three
//! things made the proxy's: `model` is the pairing's name (not the target's model file), the final
//! chunk (or the whole body) carries a `tightwad` object (`served_by: "passthrough"` and the
//! reason), and errors are OpenAI's shapes and codes (`context_length_exceeded`, …) instead of the
//! target's. If the target breaks off a stream, the client gets an OpenAI error event and
//! `[DONE]`.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};

use super::error::ApiError;
use super::guard;
use super::openai::Endpoint;
use crate::engine::ForwardReason;

/// The response header that says which path served a request.
pub const SERVED_BY: &str = "x-tightwad-served-by";

/// Relay the target's reply to a forwarded request (see the module's documentation), with the
/// reason it was forwarded in `x-tightwad-served-by`. The permit lives as long as the reply does.
pub(super) async fn forwarded(
    resp: reqwest::Response,
    reason: &ForwardReason,
    endpoint: Endpoint,
    model: String,
    permit: guard::Permit,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let served_by = format!("passthrough; reason={}", reason.tag());
    let contract = Contract::new(model, endpoint, reason);
    if !status.is_success() {
        let body = resp.bytes().await.unwrap_or_default();
        drop(permit);
        let mut r = contract.error(status.as_u16(), &body).into_response();
        r.headers_mut()
            .insert(SERVED_BY, served_by.parse().expect("an ASCII header value"));
        return r;
    }
    if !content_type.starts_with("text/event-stream") {
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return ApiError {
                    status: StatusCode::BAD_GATEWAY,
                    message: format!("the target broke off its reply: {e}"),
                    kind: "server_error",
                    param: None,
                    code: Some("backend_error"),
                }
                .into_response()
            }
        };
        drop(permit);
        let body = match serde_json::from_slice::<Value>(&body) {
            Ok(mut v) if v.is_object() => {
                contract.whole(&mut v);
                Bytes::from(v.to_string())
            }
            _ => body,
        };
        return Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(SERVED_BY, served_by)
            .body(Body::from(body))
            .unwrap_or_else(|_| ApiError::internal("could not build the reply").into_response());
    }
    let mut events = SseEvents::default();
    let stream = resp
        .bytes_stream()
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, move |failed, item| {
            let _held = &permit;
            let out = match item {
                _ if *failed => None,
                Some(Ok(bytes)) => Some(Ok::<Bytes, std::io::Error>(Bytes::from(
                    events.push(&bytes, &contract),
                ))),
                Some(Err(e)) => {
                    *failed = true;
                    let err = ApiError {
                        status: StatusCode::BAD_GATEWAY,
                        message: format!("the target broke off the stream: {e}"),
                        kind: "server_error",
                        param: None,
                        code: Some("backend_error"),
                    };
                    Some(Ok(Bytes::from(format!(
                        "data: {}\n\ndata: [DONE]\n\n",
                        err.body()
                    ))))
                }
                None => Some(Ok(Bytes::from(events.finish()))),
            };
            futures::future::ready(out)
        });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(SERVED_BY, served_by)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::not_found(endpoint.path()).into_response())
}

/// Relay the target's reply on a route the engine does not drive, as it came: status, content
/// type and body (a stream stays a stream), with `x-tightwad-served-by`. The permit lives as long
/// as the reply does.
pub(super) fn raw(
    resp: reqwest::Response,
    reason: &ForwardReason,
    permit: guard::Permit,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let served_by = format!("passthrough; reason={}", reason.tag());
    let stream = resp.bytes_stream().map(move |chunk| {
        let _held = &permit;
        chunk.map_err(std::io::Error::other)
    });
    let mut builder = Response::builder()
        .status(status)
        .header(SERVED_BY, served_by);
    if let Some(ct) = content_type.and_then(|v| header::HeaderValue::from_bytes(v.as_bytes()).ok())
    {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::internal("could not build the reply").into_response())
}

/// What the proxy makes its own in a relayed reply.
pub struct Contract {
    model: String,
    endpoint: Endpoint,
    tightwad: Value,
}

impl Contract {
    /// The contract of a reply to a request on `endpoint` for the pairing `model`, forwarded for
    /// `reason`.
    pub fn new(model: String, endpoint: Endpoint, reason: &ForwardReason) -> Self {
        Contract {
            model,
            endpoint,
            tightwad: json!({
                "served_by": "passthrough",
                "reason": reason.tag(),
                "rounds": 0,
                "drafted": 0,
                "accepted": 0,
            }),
        }
    }

    /// A whole (non-streamed) reply: the pairing's model name and the `tightwad` object.
    pub fn whole(&self, v: &mut Value) {
        if v.get("error").is_some() {
            return;
        }
        v["model"] = json!(self.model);
        v["tightwad"] = self.tightwad.clone();
    }

    /// One streamed chunk: the pairing's model name; the `tightwad` object on the chunk that
    /// ends the choice (as on the engine's final chunk); a target error in OpenAI's shape.
    fn chunk(&self, v: &mut Value) {
        if v.get("error").is_some() {
            *v = self.error(500, v.to_string().as_bytes()).body();
            return;
        }
        if v.get("model").is_some() {
            v["model"] = json!(self.model);
        }
        let finished = v["choices"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| !c["finish_reason"].is_null()));
        if finished {
            v["tightwad"] = self.tightwad.clone();
        }
    }

    /// The target's error reply (`status`, `body`) as an OpenAI error: the target's message, our
    /// type and code (a prompt longer than the context is `context_length_exceeded`, as on the
    /// engine's path).
    pub fn error(&self, status: u16, body: &[u8]) -> ApiError {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let err = v.get("error").unwrap_or(&v);
        let message = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| crate::backend::http::truncate(&String::from_utf8_lossy(body), 500));
        let target_type = err.get("type").and_then(Value::as_str).unwrap_or("");
        // llama-server: `exceed_context_size_error` (status 400); vLLM: "maximum context length".
        let lower = message.to_ascii_lowercase();
        let param = match self.endpoint {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Completions => "prompt",
        };
        if target_type == "exceed_context_size_error"
            || (lower.contains("context")
                && (lower.contains("exceed") || lower.contains("maximum")))
        {
            return ApiError::invalid(
                format!("The prompt does not fit the target's context: {message}"),
                Some(param),
            )
            .with_code("context_length_exceeded");
        }
        let status = if status == 500 {
            // An error event inside a 200 stream: the status field of the target's error.
            err.get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(500)
        } else {
            status
        };
        let (status, kind, code) = match status {
            400..=499 => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "backend_rejected_request",
            ),
            503 => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "backend_unavailable",
            ),
            504 => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "backend_timeout",
            ),
            _ => (StatusCode::BAD_GATEWAY, "server_error", "backend_error"),
        };
        ApiError {
            status,
            message: format!("the target refused the request: {message}"),
            kind,
            param: None,
            code: Some(code),
        }
    }
}

/// SSE bytes cut into whole events (a blank line ends one), each rewritten by [`Contract::chunk`].
#[derive(Default)]
pub struct SseEvents {
    pending: Vec<u8>,
}

impl SseEvents {
    /// The rewritten complete events among what has arrived so far.
    pub fn push(&mut self, bytes: &[u8], contract: &Contract) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some((end, sep)) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end + sep).collect();
            out.extend_from_slice(&rewrite_event(&event[..end], contract));
            out.extend_from_slice(b"\n\n");
        }
        out
    }

    /// Whatever was left without an ending blank line, as it came.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Where the first event ends (index of its terminating blank line, and that separator's length).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn rewrite_event(event: &[u8], contract: &Contract) -> Vec<u8> {
    let text = String::from_utf8_lossy(event);
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let Some(payload) = line.strip_prefix("data:") else {
                return line.to_string();
            };
            match serde_json::from_str::<Value>(payload.trim_start()) {
                Ok(mut v) if v.is_object() => {
                    contract.chunk(&mut v);
                    format!("data: {v}")
                }
                _ => line.to_string(),
            }
        })
        .collect();
    lines.join("\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Contract {
        Contract {
            model: "pair".into(),
            endpoint: Endpoint::ChatCompletions,
            tightwad: json!({"served_by": "passthrough", "reason": "field:tools"}),
        }
    }

    #[test]
    fn events_split_across_chunks_are_rewritten_whole() {
        let c = contract();
        let mut e = SseEvents::default();
        let first = br#"data: {"model":"/models/t.gguf","choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        let mut out = e.push(&first[..20], &c);
        assert!(out.is_empty());
        out.extend(e.push(&first[20..], &c));
        out.extend(e.push(b"\n\ndata: {\"model\":\"x\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n", &c));
        let text = String::from_utf8(out).expect("utf-8");
        let events: Vec<&str> = text.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(events.len(), 3, "{text}");
        let v: Value = serde_json::from_str(&events[0][6..]).expect("json");
        assert_eq!(v["model"], "pair");
        assert!(v.get("tightwad").is_none());
        let v: Value = serde_json::from_str(&events[1][6..]).expect("json");
        assert_eq!(v["tightwad"]["served_by"], "passthrough");
        assert_eq!(events[2], "data: [DONE]");
    }

    #[test]
    fn target_errors_become_openai_errors() {
        let c = contract();
        let e = c.error(
            400,
            br#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}"#,
        );
        assert_eq!(e.status, 400);
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = c.error(500, b"boom");
        assert_eq!(e.status, 502);
        assert_eq!(e.code, Some("backend_error"));
        let mut v = json!({"error": {"code": 400, "message": "bad grammar", "type": "invalid_request_error"}});
        c.chunk(&mut v);
        assert_eq!(v["error"]["code"], "backend_rejected_request");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
}
