//! The one crypto provider Tightwad uses (rustls with ring), for TLS ([`crate::tls`]), key
//! generation ([`crate::identity`]) and signature checks of pinned peers ([`crate::trust`]).

/// The one crypto provider Tightwad uses.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
