//! Pinned peers and the rustls verifiers that enforce them.
//!
//! There is no certificate authority: a node trusts exactly the certificates whose sha256
//! fingerprints it has pinned (persisted in `peers.json` in its state directory). The verifiers
//! below accept only pinned fingerprints but still verify the TLS 1.3 handshake signatures with
//! the certificate's key, so a peer must hold the private key of the certificate it shows.

use crate::fsutil::{read_optional, write_atomic};
use crate::{Fingerprint, ProtocolError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const PEERS_FILE: &str = "peers.json";

/// What a pinned peer may do here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    /// The coordinator: may control this node.
    Coordinator,
    /// An agent host (pinned by the coordinator).
    Agent,
    /// Another agent introduced by the coordinator: may only push model files here.
    Peer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedPeer {
    pub name: String,
    pub fingerprint: Fingerprint,
    pub role: PeerRole,
    /// Seconds since the Unix epoch when it was pinned.
    pub pinned_at: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PeersFile {
    peers: Vec<PinnedPeer>,
}

/// The pinned peers of one node, shared between its verifiers and its request handlers.
#[derive(Debug)]
pub struct TrustStore {
    path: PathBuf,
    peers: RwLock<Vec<PinnedPeer>>,
}

impl TrustStore {
    /// Loads `peers.json` from `state_dir` (empty when absent).
    pub fn load(state_dir: &Path) -> Result<Arc<Self>, ProtocolError> {
        let path = state_dir.join(PEERS_FILE);
        let peers = match read_optional(&path)? {
            Some(bytes) => {
                serde_json::from_slice::<PeersFile>(&bytes)
                    .map_err(|e| ProtocolError::CorruptState {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?
                    .peers
            }
            None => Vec::new(),
        };
        Ok(Arc::new(TrustStore {
            path,
            peers: RwLock::new(peers),
        }))
    }

    pub fn peers(&self) -> Vec<PinnedPeer> {
        self.peers.read().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn find(&self, fingerprint: &Fingerprint) -> Option<PinnedPeer> {
        self.peers()
            .into_iter()
            .find(|p| &p.fingerprint == fingerprint)
    }

    pub fn by_name(&self, name: &str, role: PeerRole) -> Option<PinnedPeer> {
        self.peers()
            .into_iter()
            .find(|p| p.name == name && p.role == role)
    }

    /// Pins `fingerprint` under `name` and `role`, replacing an earlier pin of the same name and
    /// role, and persists the list atomically.
    pub fn pin(
        &self,
        name: &str,
        fingerprint: Fingerprint,
        role: PeerRole,
    ) -> Result<(), ProtocolError> {
        let mut guard = self
            .peers
            .write()
            .map_err(|_| ProtocolError::CorruptState {
                path: self.path.display().to_string(),
                reason: "trust store lock poisoned".into(),
            })?;
        guard.retain(|p| !(p.name == name && p.role == role) && p.fingerprint != fingerprint);
        guard.push(PinnedPeer {
            name: name.to_string(),
            fingerprint,
            role,
            pinned_at: unix_now(),
        });
        let file = PeersFile {
            peers: guard.clone(),
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        write_atomic(&self.path, &json, 0o600)
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    crate::crypto::crypto_provider().signature_verification_algorithms
}

/// Server side (agent): accepts a client certificate only when its fingerprint is pinned.
#[derive(Debug)]
pub struct PinnedClientVerifier {
    trust: Arc<TrustStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedClientVerifier {
    pub fn new(trust: Arc<TrustStore>) -> Arc<Self> {
        Arc::new(PinnedClientVerifier {
            trust,
            algorithms: signature_algorithms(),
        })
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_der(end_entity);
        if self.trust.find(&fingerprint).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            tracing::warn!(%fingerprint, "refused a peer whose certificate is not pinned here");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What a client expects of the server it connects to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerExpectation {
    /// Only this certificate.
    Pinned(Fingerprint),
    /// Any certificate, recorded: only for enrollment, where the caller must then check a join
    /// proof bound to the fingerprint seen before trusting the peer with anything.
    Enrollment,
}

/// Client side: accepts the server certificate named by a [`ServerExpectation`] and records the
/// fingerprint it saw (so a mismatch can be reported with both fingerprints).
#[derive(Debug)]
pub struct PinnedServerVerifier {
    expectation: ServerExpectation,
    seen: Mutex<Option<Fingerprint>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    pub fn new(expectation: ServerExpectation) -> Arc<Self> {
        Arc::new(PinnedServerVerifier {
            expectation,
            seen: Mutex::new(None),
            algorithms: signature_algorithms(),
        })
    }

    /// The fingerprint the server presented, once the handshake got that far.
    pub fn seen(&self) -> Option<Fingerprint> {
        self.seen.lock().ok().and_then(|s| *s)
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fingerprint = Fingerprint::of_der(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fingerprint);
        }
        match self.expectation {
            ServerExpectation::Pinned(pinned) if pinned == fingerprint => {
                Ok(ServerCertVerified::assertion())
            }
            ServerExpectation::Pinned(pinned) => {
                tracing::warn!(%pinned, got = %fingerprint, "server certificate does not match the pinned fingerprint");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
            ServerExpectation::Enrollment => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_persist_and_replace_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = TrustStore::load(dir.path()).expect("load");
        let a = Fingerprint::of_der(b"a");
        let b = Fingerprint::of_der(b"b");
        store.pin("host", a, PeerRole::Agent).expect("pin");
        store.pin("host", b, PeerRole::Agent).expect("re-pin");
        let reloaded = TrustStore::load(dir.path()).expect("reload");
        assert_eq!(reloaded.peers().len(), 1);
        assert_eq!(
            reloaded
                .by_name("host", PeerRole::Agent)
                .map(|p| p.fingerprint),
            Some(b)
        );
        assert!(reloaded.find(&a).is_none());
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(PEERS_FILE), b"{nope").expect("write");
        assert!(matches!(
            TrustStore::load(dir.path()),
            Err(ProtocolError::CorruptState { .. })
        ));
    }
}
