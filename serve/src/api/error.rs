//! Errors in OpenAI's JSON shape, so SDKs raise their usual exceptions with our message.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::backend::BackendError;
use crate::engine::EngineError;

/// An error a client sees: HTTP status + `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn model_not_found(model: &str, available: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model `{model}` does not exist. Available models: {}.",
                available.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("The request body is larger than the limit of {limit} bytes."),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "The request body did not arrive within {} s.",
                limit.as_secs()
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// 405, in the same JSON shape as every other error.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {path}."),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 403: a control route asked from another address than loopback, without an API key.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("forbidden"),
        }
    }

    pub fn not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("No route for {path}. Tightwad serves /v1/chat/completions, /v1/completions and /v1/models, and forwards the target's own routes (/v1/embeddings, /v1/responses, /v1/messages, /tokenize, …)."),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 503: the service cannot take this request now (a pairing drained for a model swap).
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("pairing_swapping"),
        }
    }

    /// 504: an admin operation did not finish in the time it was given.
    pub fn timeout(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("timeout"),
        }
    }

    /// A failure of the proxy itself (a task that ended without its result).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn backend(e: &BackendError) -> Self {
        let status = StatusCode::from_u16(e.client_status()).unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError {
            status,
            message: e.to_string(),
            kind: if status == StatusCode::BAD_REQUEST {
                "invalid_request_error"
            } else {
                "server_error"
            },
            param: None,
            code: Some(match status.as_u16() {
                503 => "backend_unavailable",
                504 => "backend_timeout",
                400 => "backend_rejected_request",
                _ => "backend_error",
            }),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match &e {
            EngineError::Backend(b) => ApiError::backend(b),
            EngineError::ContextExceeded { .. } => {
                ApiError::invalid(e.to_string(), Some("messages"))
                    .with_code("context_length_exceeded")
            }
            EngineError::ClientGone => ApiError {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            },
        }
    }
}

/// What a 429 tells the client to wait before retrying, in seconds: places free up as soon as a
/// generation ends, so a short wait is right.
pub const RETRY_AFTER_S: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_S),
            );
        }
        response
    }
}
