//! Clients for the inference servers the proxy drives.
//!
//! The engine talks to backends in token ids only: prompts go out as id arrays, results come back as
//! ids plus the exact bytes of each token, so nothing is re-tokenized on the way (the predecessor's
//! text round trips are why its output was not the target's). One module per server kind.

pub mod http;
pub mod llamacpp;
pub mod reasoning;
pub mod server;
#[cfg(test)]
pub mod simulated;
pub mod sse;
pub mod types;
pub mod vllm;

pub use server::{Backend, BackendKind, ServerFacts};
pub use types::{
    Candidate, Completion, DraftOptions, Piece, Role, SampledToken, Sampling, StreamEvent, Timings,
    TokenId,
};

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
    /// One failure answered to several callers (a probe shared by the requests that waited).
    #[error("{0}")]
    Shared(std::sync::Arc<BackendError>),
}

impl BackendError {
    /// The HTTP status the client should see when this error ends a request.
    pub fn client_status(&self) -> u16 {
        match self {
            BackendError::Shared(e) => e.client_status(),
            BackendError::Unreachable { .. } => 503,
            BackendError::Timeout { .. } => 504,
            BackendError::Status { status, .. } if (400..500).contains(status) => 400,
            _ => 502,
        }
    }
}
