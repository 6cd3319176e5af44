//! The target's own routes that the engine does not drive (`/v1/embeddings`, `/v1/responses`,
//! `/v1/messages`, `/v1/rerank`, `/v1/audio/*`, `/tokenize`, `/detokenize`, `/infill`, …): admitted
//! like a completion (API key, concurrency, body limit, drain), sent to the target of the pairing
//! the body's `model` names, and relayed as the target answered (status, content type, body and
//! stream byte for byte) with `x-tightwad-served-by: passthrough; reason=route`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tracing::{info_span, Instrument};

use super::error::ApiError;
use super::{completions, relay, AppState};
use crate::engine::ForwardReason;

/// The target's routes forwarded as they are (llama-server's, with their aliases). Not
/// `/slots` (other clients' prompts), `/props` (settable), `/metrics` (the proxy's own).
const ROUTES: &[&str] = &[
    "/v1/embeddings",
    "/embeddings",
    "/embedding",
    "/v1/responses",
    "/responses",
    "/v1/responses/input_tokens",
    "/responses/input_tokens",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/rerank",
    "/v1/reranking",
    "/rerank",
    "/reranking",
    "/tokenize",
    "/detokenize",
    "/apply-template",
    "/infill",
    "/completion",
];

/// Whether the proxy forwards `path` to a target.
pub(super) fn forwarded(path: &str) -> bool {
    ROUTES.contains(&path) || path.starts_with("/v1/audio/")
}

/// The router's fallback: a target route is forwarded, anything else is a 404 in OpenAI's shape.
pub(super) async fn fallback(
    State(state): State<Arc<AppState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let path = req.uri().path().to_string();
    if !forwarded(&path) {
        return ApiError::not_found(&path).into_response();
    }
    let span = info_span!("request", endpoint = %path);
    async move { super::completions::answer(forward(state, client, req).await) }
        .instrument(span)
        .await
}

async fn forward(
    state: Arc<AppState>,
    client: SocketAddr,
    req: Request,
) -> Result<Response, ApiError> {
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .map_err(|_| ApiError::method_not_allowed(req.method().as_str(), req.uri().path()))?;
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (permit, body) = completions::admit_body(&state, client, req).await?;
    let model = model_of(content_type.as_deref(), &body);
    let pairing = state.pairing(model.as_deref())?;
    let permit = completions::wait_turn(&state, &pairing, permit).await?;
    let response = pairing
        .forward_route(method, &path_and_query, content_type.as_deref(), body)
        .await?;
    Ok(relay::raw(response, &ForwardReason::Route, permit))
}

/// The model a request names: `model` of a JSON body, or the `model` field of a multipart form
/// (`/v1/audio/transcriptions`); `None` (the first pairing) otherwise.
fn model_of(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    if ct.starts_with("multipart/form-data") {
        return multipart_field(body, "model");
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("model").and_then(Value::as_str).map(str::to_string)
}

/// A small text field of a multipart form, without a multipart parser: the part whose headers say
/// `name="NAME"`, up to the next boundary line.
fn multipart_field(body: &[u8], name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    let at = body
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())?;
    let rest = &body[at + marker.len()..];
    let start = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let value = &rest[start..];
    let end = value.windows(2).position(|w| w == b"\r\n")?;
    let text = std::str::from_utf8(&value[..end]).ok()?;
    (text.len() <= 256).then(|| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_comes_from_json_or_a_form() {
        assert_eq!(
            model_of(Some("application/json"), br#"{"model":"m","input":"x"}"#).as_deref(),
            Some("m")
        );
        assert_eq!(model_of(None, b"not json"), None);
        let form = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
        assert_eq!(
            model_of(Some("multipart/form-data; boundary=b"), form).as_deref(),
            Some("whisper")
        );
    }

    #[test]
    fn only_the_targets_inference_routes_are_forwarded() {
        for p in [
            "/v1/embeddings",
            "/v1/responses",
            "/v1/messages",
            "/tokenize",
            "/v1/audio/transcriptions",
        ] {
            assert!(forwarded(p), "{p}");
        }
        for p in ["/slots", "/props", "/v1/nothing", "/metrics"] {
            assert!(!forwarded(p), "{p}");
        }
    }
}
