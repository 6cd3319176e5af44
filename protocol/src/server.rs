//! The server side, used by the agent: a QUIC endpoint that only completes handshakes with pinned
//! peers, and hands each request stream to the caller. Hello, authorisation and the requests
//! themselves are the agent's business; this module makes sure a broken peer only ever costs its
//! own stream or connection.

use crate::client::FramedStream;
use crate::identity::NodeIdentity;
use crate::messages::{ErrorKind, Reply, Request};
use crate::tls::server_config;
use crate::trust::TrustStore;
use crate::{Fingerprint, ProtocolError};
use std::net::SocketAddr;
use std::sync::Arc;

pub struct Server {
    endpoint: quinn::Endpoint,
}

impl Server {
    pub fn bind(
        address: SocketAddr,
        identity: &NodeIdentity,
        trust: Arc<TrustStore>,
    ) -> Result<Self, ProtocolError> {
        let config = server_config(identity, trust)?;
        let endpoint = quinn::Endpoint::server(config, address)
            .map_err(|e| ProtocolError::io(format!("udp {address}"), e))?;
        Ok(Server { endpoint })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ProtocolError> {
        self.endpoint
            .local_addr()
            .map_err(|e| ProtocolError::io("udp socket", e))
    }

    /// The next incoming connection attempt; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"agent shutting down");
    }
}

/// Completes the handshake of an incoming connection (the pinned-client verifier runs here).
pub async fn handshake(incoming: quinn::Incoming) -> Result<PeerConnection, ProtocolError> {
    let remote = incoming.remote_address();
    let connection = incoming
        .await
        .map_err(|e| crate::client::describe_connection_error(&remote.to_string(), e))?;
    let fingerprint = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().map(|c| Fingerprint::of_der(c)))
        .ok_or_else(|| ProtocolError::Malformed("peer presented no certificate".into()))?;
    Ok(PeerConnection {
        connection,
        fingerprint,
        remote,
    })
}

/// A connection from a pinned peer.
pub struct PeerConnection {
    connection: quinn::Connection,
    fingerprint: Fingerprint,
    remote: SocketAddr,
}

impl PeerConnection {
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// The next request stream; `None` when the peer closed the connection.
    pub async fn accept(&self) -> Option<RequestStream> {
        match self.connection.accept_bi().await {
            Ok((send, recv)) => Some(RequestStream {
                stream: FramedStream { send, recv },
            }),
            Err(e) => {
                tracing::debug!(peer = %self.remote, reason = %e, "connection ended");
                None
            }
        }
    }

    pub fn close(&self, code: u32, reason: &str) {
        self.connection.close(code.into(), reason.as_bytes());
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.connection.close_reason()
    }
}

/// One request stream on the server side.
pub struct RequestStream {
    pub stream: FramedStream,
}

impl RequestStream {
    /// Reads the request. A malformed or oversize frame is answered with an error reply and the
    /// stream reset; the connection and the agent carry on.
    pub async fn read_request(&mut self) -> Result<Request, ProtocolError> {
        let result = self.stream.recv::<Request>().await;
        let (kind, error) = match result {
            Ok(Some(request)) => return Ok(request),
            Ok(None) => return Err(ProtocolError::UnexpectedEnd),
            Err(e @ ProtocolError::FrameTooLarge { .. }) => (ErrorKind::FrameTooLarge, e),
            Err(e @ ProtocolError::Malformed(_)) => (ErrorKind::Malformed, e),
            Err(e) => return Err(e),
        };
        let _ = self.reply(&Reply::error(kind, error.to_string())).await;
        let _ = self.stream.finish();
        self.stream.stopped().await;
        Err(error)
    }

    pub async fn reply(&mut self, reply: &Reply) -> Result<(), ProtocolError> {
        self.stream.send(reply).await
    }

    /// Sends the last reply and ends the stream.
    pub async fn reply_and_finish(mut self, reply: &Reply) -> Result<(), ProtocolError> {
        self.stream.send(reply).await?;
        self.stream.finish()?;
        self.stream.stopped().await;
        Ok(())
    }
}
