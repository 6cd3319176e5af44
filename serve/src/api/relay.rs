//! A request the engine forwarded to the target: its reply relayed as it came (status, content
//! type, body stream), with an OpenAI error event if the target breaks off a stream.

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use super::guard;
use super::openai::Endpoint;
use crate::engine::ForwardReason;

/// The response header that says which path served a request.
pub const SERVED_BY: &str = "x-tightwad-served-by";

/// Relay the target's own reply to a forwarded request, byte for byte, with the reason it was
/// forwarded in `x-tightwad-served-by`.
pub(super) fn forwarded(
    resp: reqwest::Response,
    reason: &ForwardReason,
    endpoint: Endpoint,
    permit: guard::Permit,
) -> Response {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    // The permit lives as long as the relayed body does. If the target breaks off a stream, the
    // client gets an OpenAI error event and `[DONE]` instead of a silently truncated stream.
    let is_sse = content_type.starts_with("text/event-stream");
    let stream = resp
        .bytes_stream()
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, move |failed, item| {
            let _held = &permit;
            let out = match item {
                _ if *failed => None,
                Some(Ok(bytes)) => Some(Ok::<Bytes, std::io::Error>(bytes)),
                Some(Err(e)) if is_sse => {
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
                Some(Err(e)) => Some(Err(std::io::Error::other(e))),
                None => None,
            };
            futures::future::ready(out)
        });
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(SERVED_BY, format!("passthrough; reason={}", reason.tag()))
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::not_found(endpoint.path()).into_response())
}
