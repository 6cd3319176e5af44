//! A node's own identity: an ECDSA P-256 key pair and a self-signed certificate, created on first
//! start in the node's state directory and kept, so peers can pin its fingerprint.

use crate::fsutil::{read_optional, write_atomic};
use crate::{Fingerprint, ProtocolError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};

const CERT_FILE: &str = "node.crt.der";
const KEY_FILE: &str = "node.key.der";

/// The certificate and private key this node presents to its peers.
#[derive(Clone)]
pub struct NodeIdentity {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl NodeIdentity {
    /// Loads the identity from `state_dir`, creating it (key file mode 0600) on first start.
    pub fn load_or_create(state_dir: &Path, common_name: &str) -> Result<Self, ProtocolError> {
        let cert_path = state_dir.join(CERT_FILE);
        let key_path = state_dir.join(KEY_FILE);
        match (read_optional(&cert_path)?, read_optional(&key_path)?) {
            (Some(cert_der), Some(key_der)) => {
                let identity = Self::from_der(cert_der, key_der);
                identity.check_key_matches(&key_path)?;
                Ok(identity)
            }
            (None, None) => {
                let identity = Self::generate(common_name)?;
                if !state_dir.exists() {
                    std::fs::create_dir_all(state_dir).map_err(|e| ProtocolError::io(state_dir, e))?;
                    // A state dir we create holds the key and the trust list: private to its
                    // owner. (An existing directory the user chose keeps its permissions.)
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| ProtocolError::io(state_dir, e))?;
                }
                // Key first: a crash between the two writes leaves no certificate without its key.
                write_atomic(&key_path, &identity.key_der, 0o600)?;
                write_atomic(&cert_path, &identity.cert_der, 0o644)?;
                tracing::info!(fingerprint = %identity.fingerprint, dir = %state_dir.display(), "created node identity");
                Ok(identity)
            }
            _ => Err(ProtocolError::CorruptState {
                path: state_dir.display().to_string(),
                reason: format!("only one of {CERT_FILE} and {KEY_FILE} exists; remove the other to create a new identity"),
            }),
        }
    }

    /// A fresh in-memory identity (tests, throw-away clients).
    pub fn generate(common_name: &str) -> Result<Self, ProtocolError> {
        let certified = rcgen::generate_simple_self_signed(vec![common_name.to_string()])?;
        Ok(Self::from_der(
            certified.cert.der().to_vec(),
            certified.key_pair.serialize_der(),
        ))
    }

    fn from_der(cert_der: Vec<u8>, key_der: Vec<u8>) -> Self {
        let fingerprint = Fingerprint::of_der(&cert_der);
        NodeIdentity {
            cert_der,
            key_der,
            fingerprint,
        }
    }

    /// Makes sure the stored key can sign with the stored certificate: a mismatched pair would
    /// only show up as confusing handshake failures on the peer.
    fn check_key_matches(&self, key_path: &Path) -> Result<(), ProtocolError> {
        let provider = crate::crypto::crypto_provider();
        let key = provider
            .key_provider
            .load_private_key(self.private_key())
            .map_err(|e| ProtocolError::CorruptState {
                path: key_path.display().to_string(),
                reason: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(vec![self.certificate()], key);
        certified
            .keys_match()
            .map_err(|e| ProtocolError::CorruptState {
                path: key_path.display().to_string(),
                reason: format!("key does not match the certificate: {e}"),
            })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn certificate(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// Where the identity files of a state directory live (for messages and tests).
pub fn identity_files(state_dir: &Path) -> (PathBuf, PathBuf) {
    (state_dir.join(CERT_FILE), state_dir.join(KEY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_kept_with_private_key_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = NodeIdentity::load_or_create(dir.path(), "node").expect("create");
        let second = NodeIdentity::load_or_create(dir.path(), "node").expect("load");
        assert_eq!(first.fingerprint(), second.fingerprint());
        let (_, key) = identity_files(dir.path());
        let mode = std::fs::metadata(key).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn half_identity_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        NodeIdentity::load_or_create(dir.path(), "node").expect("create");
        let (cert, _) = identity_files(dir.path());
        std::fs::remove_file(cert).expect("rm");
        let err = NodeIdentity::load_or_create(dir.path(), "node").expect_err("must refuse");
        assert!(matches!(err, ProtocolError::CorruptState { .. }));
    }
}
