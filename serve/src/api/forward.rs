//! The target's own routes that the engine does not drive (`/v1/embeddings`, `/v1/responses`,
//! `/v1/messages`, `/v1/rerank`, `/v1/audio/*`, `/tokenize`, `/detokenize`, `/infill`, …): admitted
//! like a completion (API key, concurrency, body limit, drain), sent to the target of the pairing
//! the body's `model` names, and relayed as the target answered (status, content type, body and
//! stream byte for byte) with `x-tightwad-served-by: passthrough; reason=route`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
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
    let model = model_of(content_type.as_deref(), &body).await;
    let pairing = state.pairing(model.as_deref())?;
    let permit = completions::wait_turn(&state, &pairing, permit).await?;
    let response = pairing
        .forward_route(method, &path_and_query, content_type.as_deref(), body)
        .await?;
    Ok(relay::raw(response, &ForwardReason::Route, permit))
}

/// The model a request names: `model` of a JSON body, or the `model` field of a multipart form
/// (`/v1/audio/transcriptions`); `None` (the first pairing) otherwise.
pub async fn model_of(content_type: Option<&str>, body: &Bytes) -> Option<String> {
    let ct = content_type.unwrap_or("");
    if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        return form_field(ct, body.clone(), "model").await;
    }
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("model").and_then(Value::as_str).map(str::to_string)
}

/// A small text field of a multipart form, read with a real multipart parser (multer, axum's):
/// the part named NAME that is not a file. Searching the bytes for `name="model"` instead took a
/// file uploaded as `filename="model"` (or a file's own bytes) for the field, and routed the
/// request by the file's contents (found by fuzz/fuzz_targets/forwarded_request.rs).
async fn form_field(content_type: &str, body: Bytes, name: &str) -> Option<String> {
    /// Model names are short; a longer value names no pairing.
    const MAX_VALUE: usize = 256;
    let boundary = multer::parse_boundary(content_type).ok()?;
    let stream = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some(name) && field.file_name().is_none() {
            let value = field.bytes().await.ok()?;
            let text = std::str::from_utf8(&value).ok()?;
            return (text.len() <= MAX_VALUE).then(|| text.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(content_type: Option<&str>, body: &[u8]) -> Option<String> {
        futures::executor::block_on(model_of(content_type, &Bytes::copy_from_slice(body)))
    }

    #[test]
    fn the_model_comes_from_json_or_a_form() {
        assert_eq!(
            model(Some("application/json"), br#"{"model":"m","input":"x"}"#).as_deref(),
            Some("m")
        );
        assert_eq!(model(None, b"not json"), None);
        let form = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
        assert_eq!(
            model(Some("multipart/form-data; boundary=b"), form).as_deref(),
            Some("whisper")
        );
    }

    /// A file uploaded under the name `model` (`filename="model"` contains `name="model"`), or
    /// a file whose bytes contain such a header, routed the request by the file's first line:
    /// the form's `model` field, after it, was never read (a 404 for a valid request).
    #[test]
    fn a_form_routes_by_its_model_field_not_by_a_file_named_model() {
        let form = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"model\"\r\nContent-Type: audio/wav\r\n\r\nRIFF-bytes\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
        assert_eq!(
            model(Some("multipart/form-data; boundary=b"), form).as_deref(),
            Some("whisper")
        );
        let smuggled = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nname=\"model\"\r\n\r\nother\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper\r\n--b--\r\n";
        assert_eq!(
            model(Some("multipart/form-data; boundary=b"), smuggled).as_deref(),
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
