//! Clients for the inference servers the proxy drives.
//!
//! The engine talks to backends in token ids only: prompts go out as id arrays, results come back as
//! ids plus the exact bytes of each token, so nothing is re-tokenized on the way (the predecessor's
//! text round trips are why its output was not the target's). One module per server kind.

pub mod llamacpp;
pub mod server;
pub mod vllm;

pub use server::{Backend, BackendKind, ServerFacts};

use thiserror::Error;

/// Why a backend call failed; the API layer maps these to OpenAI error bodies (502/503/504).
#[derive(Debug, Error)]
pub enum BackendError {
    #[error("{server} is unreachable at {url}: {source}")]
    Unreachable {
        server: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{server} answered {status} for {path}: {body}")]
    Status {
        server: &'static str,
        path: String,
        status: u16,
        body: String,
    },
    #[error("{server} sent a reply to {path} that could not be read: {detail}")]
    Malformed {
        server: &'static str,
        path: String,
        detail: String,
    },
    #[error("{server} did not answer {path} within {seconds} s")]
    Timeout {
        server: &'static str,
        path: String,
        seconds: u64,
    },
}

impl BackendError {
    /// The HTTP status the client should see when this error ends a request.
    pub fn client_status(&self) -> u16 {
        match self {
            BackendError::Unreachable { .. } => 503,
            BackendError::Timeout { .. } => 504,
            BackendError::Status { status, .. } if (400..500).contains(status) => 400,
            _ => 502,
        }
    }
}

/// How a request that got no HTTP answer failed: a timeout, or the server was not reachable.
/// Shared by every backend kind so the API layer maps them the same way.
pub(crate) fn send_error(
    server: &'static str,
    url: String,
    path: &str,
    timeout: std::time::Duration,
    e: reqwest::Error,
) -> BackendError {
    if e.is_timeout() {
        BackendError::Timeout {
            server,
            path: path.to_string(),
            seconds: timeout.as_secs(),
        }
    } else {
        BackendError::Unreachable {
            server,
            url,
            source: e,
        }
    }
}

/// The response when its status is a success, else the server's own error text (shortened) as a
/// [`BackendError::Status`].
pub(crate) async fn check_status(
    server: &'static str,
    path: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, BackendError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    Err(BackendError::Status {
        server,
        path: path.to_string(),
        status,
        body: llamacpp::truncate(&body, 500),
    })
}

/// The HTTP client every backend kind uses for one server: connections kept for reuse (a round
/// is two requests; a new TCP handshake each time would add an RTT), no Nagle delay on the small
/// verify requests, and a short connect timeout so a dead host is found quickly.
pub(crate) fn http_client(
    server: &'static str,
    base: &str,
) -> Result<reqwest::Client, BackendError> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|source| BackendError::Unreachable {
            server,
            url: base.to_string(),
            source,
        })
}
