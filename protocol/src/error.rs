//! Errors of the peer protocol. Every failure a peer or the network can cause ends up here, so
//! callers can tell a refused peer from a dead link from a bug.

use crate::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("QUIC configuration: {0}")]
    QuicConfig(String),
    #[error("could not connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("{address} stopped answering (nothing for {idle_secs}s): host down or link cut")]
    PeerSilent { address: String, idle_secs: u64 },
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("peer ended the stream before replying")]
    UnexpectedEnd,
    #[error("unexpected reply: expected {expected}, got {got}")]
    UnexpectedReply { expected: &'static str, got: String },
    #[error(
        "incompatible peer protocol: we speak v{ours_min}..=v{ours}, peer speaks v{theirs_min}..=v{theirs} (software {their_software})"
    )]
    IncompatibleVersion {
        ours: u32,
        ours_min: u32,
        theirs: u32,
        theirs_min: u32,
        their_software: String,
    },
    #[error("peer certificate {got} does not match the pinned fingerprint {pinned}: the peer's key changed (re-enroll it if this is expected)")]
    FingerprintChanged {
        pinned: Fingerprint,
        got: Fingerprint,
    },
    #[error("unknown peer {0}: not pinned (enroll it with a join token)")]
    UnknownPeer(Fingerprint),
    #[error("enrollment refused: {0}")]
    EnrollmentRefused(String),
    #[error("invalid join token: {0}")]
    InvalidToken(String),
    #[error("peer refused the request: {0}")]
    Remote(String),
    #[error("state file {path} is corrupt: {reason}")]
    CorruptState { path: String, reason: String },
}

impl ProtocolError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        ProtocolError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}
