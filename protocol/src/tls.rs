//! rustls and quinn configuration. The ring crypto provider is installed explicitly in every
//! config (never picked implicitly from whatever features happen to be compiled in).

use crate::crypto::crypto_provider;
use crate::identity::NodeIdentity;
use crate::trust::{PinnedClientVerifier, PinnedServerVerifier, TrustStore};
use crate::ProtocolError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id: a non-Tightwad QUIC client fails the handshake instead of sending garbage.
pub const ALPN: &[u8] = b"tightwad/1";

/// Server name sent in the TLS ClientHello; certificates are pinned, so it carries no meaning.
pub const SERVER_NAME: &str = "tightwad-node";

/// A peer that sends nothing (not even keep-alives) for this long is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive interval: well below [`IDLE_TIMEOUT`] so a live but quiet peer is never dropped.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

fn transport_config() -> Result<quinn::TransportConfig, ProtocolError> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
        .map_err(|e| ProtocolError::QuicConfig(e.to_string()))?;
    transport.max_idle_timeout(Some(idle));
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    Ok(transport)
}

/// QUIC server config: our certificate, client certificates mandatory and pinned.
pub fn server_config(
    identity: &NodeIdentity,
    trust: Arc<TrustStore>,
) -> Result<quinn::ServerConfig, ProtocolError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(PinnedClientVerifier::new(trust))
        .with_single_cert(vec![identity.certificate()], identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(tls).map_err(|e| ProtocolError::QuicConfig(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()?));
    Ok(config)
}

/// QUIC client config for one connection: our certificate, the server checked by `verifier`.
pub fn client_config(
    identity: &NodeIdentity,
    verifier: Arc<PinnedServerVerifier>,
) -> Result<quinn::ClientConfig, ProtocolError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.certificate()], identity.private_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic =
        QuicClientConfig::try_from(tls).map_err(|e| ProtocolError::QuicConfig(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config()?));
    Ok(config)
}
