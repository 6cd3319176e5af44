//! One peer's connection: the handshake, the Hello exchange (with the enrollment proof while a
//! join token is pending), and each request authorised by the peer's role before it is
//! dispatched.

use std::sync::Arc;

use tightwad_protocol::client::close_code;
use tightwad_protocol::messages::*;
use tightwad_protocol::server::{handshake, PeerConnection, RequestStream};
use tightwad_protocol::trust::PeerRole;
use tracing::Instrument;

use super::{capabilities, Agent};

impl Agent {
    pub(super) async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let peer = match handshake(incoming).await {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "refused a connection");
                return;
            }
        };
        let Some(pinned) = self.trust.find(&peer.fingerprint()) else {
            // The verifier already checked this; a pin removed meanwhile ends here.
            peer.close(close_code::ENROLLMENT_REFUSED, "not pinned");
            return;
        };
        tracing::info!(peer = %pinned.name, role = ?pinned.role, "peer connected");
        if !self.hello(&peer).await {
            return;
        }
        while let Some(stream) = peer.accept().await {
            let agent = self.clone();
            let role = pinned.role;
            tokio::spawn(async move { agent.serve_request(role, stream).await }.in_current_span());
        }
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = peer.close_reason() {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if u64::from(close.error_code) == u64::from(close_code::ENROLLMENT_REFUSED) {
                tracing::error!(peer = %pinned.name, %reason, "the coordinator refused our enrollment (wrong or expired join token?)");
            } else if u64::from(close.error_code) == u64::from(close_code::INCOMPATIBLE) {
                tracing::error!(peer = %pinned.name, %reason, "the peer refused our protocol version");
            }
        }
    }

    /// The first stream must carry Hello; answers it with ours and, while a join token from this
    /// coordinator is pending, the enrollment proof.
    async fn hello(&self, peer: &PeerConnection) -> bool {
        let Some(mut stream) = peer.accept().await else {
            return false;
        };
        let theirs = match stream.read_request().await {
            Ok(Request::Hello(hello)) => hello,
            Ok(other) => {
                let _ = stream
                    .reply_and_finish(&Reply::error(
                        ErrorKind::BadRequest,
                        format!("expected hello first, got {}", other.kind()),
                    ))
                    .await;
                peer.close(close_code::PROTOCOL_VIOLATION, "hello first");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable hello");
                peer.close(close_code::PROTOCOL_VIOLATION, "unreadable hello");
                return false;
            }
        };
        let mut ours = Hello::ours(NodeRole::Agent, &self.config.name, capabilities());
        if let Some(testing) = &self.config.testing_protocol {
            ours.protocol_version = testing.version;
            ours.min_protocol_version = testing.version;
        }
        let negotiated = match ours.negotiate(&theirs) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(peer_software = %theirs.software_version, error = %e, "incompatible peer");
                let _ = stream
                    .reply_and_finish(&Reply::error(ErrorKind::IncompatibleVersion, e.to_string()))
                    .await;
                peer.close(close_code::INCOMPATIBLE, &e.to_string());
                return false;
            }
        };
        let join_proof = match self.join.load() {
            Ok(Some(token)) if token.coordinator == peer.fingerprint() => {
                Some(token.proof(&self.identity.fingerprint()).to_vec())
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pending join token");
                None
            }
        };
        let reply = Reply::Hello(HelloReply {
            hello: ours,
            negotiated_version: negotiated,
            join_proof,
        });
        stream.reply_and_finish(&reply).await.is_ok()
    }

    async fn serve_request(self: Arc<Self>, role: PeerRole, mut stream: RequestStream) {
        let request = match stream.read_request().await {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "refused a request");
                return;
            }
        };
        let kind = request.kind();
        let allowed = match role {
            PeerRole::Coordinator => true,
            PeerRole::Peer | PeerRole::Agent => matches!(
                request,
                Request::ReceiveModel(_)
                    | Request::ModelManifest { .. }
                    | Request::ReadPiece { .. }
            ),
        };
        if !allowed {
            let _ = stream
                .reply_and_finish(&Reply::error(
                    ErrorKind::Forbidden,
                    format!("{kind} is reserved to the coordinator"),
                ))
                .await;
            return;
        }
        tracing::debug!(request = kind, "request");
        let result = self.dispatch(request, &mut stream).await;
        let reply = match result {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let _ = stream.stream.finish();
                stream.stream.stopped().await;
                return;
            }
            Err(reply) => {
                if let Reply::Error(e) = &reply {
                    tracing::warn!(request = kind, error = %e.message, "request failed");
                }
                reply
            }
        };
        let _ = stream.reply_and_finish(&reply).await;
    }
}
