//! Join tokens: how a new agent gets enrolled.
//!
//! `tightwad token` makes a random secret, stores it (with an expiry) in the coordinator's state
//! directory and prints `tightwad-join-v1:<secret>:<coordinator fingerprint>`. The agent started
//! with that token pins the coordinator's fingerprint at once (the token came over a channel the
//! user trusts) and keeps the secret. The first time the coordinator connects, the agent answers
//! its Hello with a proof: HMAC-SHA256(secret, "tightwad join v1" || agent fp || coordinator fp).
//! The proof binds the secret to the certificates of that very TLS session, so it cannot be
//! replayed by a node with another key. The coordinator checks it against its pending secrets,
//! pins the agent, and tells it to forget the secret.

use crate::fsutil::{read_optional, write_atomic};
use crate::trust::unix_now;
use crate::{Fingerprint, ProtocolError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

const TOKEN_PREFIX: &str = "tightwad-join-v1";
const PROOF_LABEL: &[u8] = b"tightwad join v1";
const PENDING_FILE: &str = "join-tokens.json";
const AGENT_JOIN_FILE: &str = "join.json";

/// A join token as printed by `tightwad token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    #[serde(with = "hex_secret")]
    pub secret: [u8; 32],
    pub coordinator: Fingerprint,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    pub fn generate(coordinator: Fingerprint) -> Self {
        JoinToken {
            secret: rand::random(),
            coordinator,
        }
    }

    /// The proof an agent with fingerprint `agent` gives for this token.
    pub fn proof(&self, agent: &Fingerprint) -> [u8; 32] {
        join_proof(&self.secret, agent, &self.coordinator)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}:{}:{}",
            hex::encode(self.secret),
            self.coordinator
        )
    }
}

impl FromStr for JoinToken {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split(':');
        let (Some(prefix), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ProtocolError::InvalidToken(format!(
                "expected {TOKEN_PREFIX}:<secret>:<fingerprint>"
            )));
        };
        if prefix != TOKEN_PREFIX {
            return Err(ProtocolError::InvalidToken(format!(
                "unknown token format {prefix:?} (this build understands {TOKEN_PREFIX})"
            )));
        }
        let secret: [u8; 32] = hex::decode(secret)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| ProtocolError::InvalidToken("secret must be 64 hex digits".into()))?;
        let coordinator = fp
            .parse()
            .map_err(|e: crate::fingerprint::FingerprintParseError| {
                ProtocolError::InvalidToken(e.to_string())
            })?;
        Ok(JoinToken {
            secret,
            coordinator,
        })
    }
}

/// HMAC-SHA256(secret, label || agent || coordinator).
pub fn join_proof(secret: &[u8; 32], agent: &Fingerprint, coordinator: &Fingerprint) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(PROOF_LABEL);
    context.update(&agent.0);
    context.update(&coordinator.0);
    let tag = context.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn proof_matches(
    secret: &[u8; 32],
    agent: &Fingerprint,
    coordinator: &Fingerprint,
    proof: &[u8],
) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut message = Vec::with_capacity(PROOF_LABEL.len() + 64);
    message.extend_from_slice(PROOF_LABEL);
    message.extend_from_slice(&agent.0);
    message.extend_from_slice(&coordinator.0);
    ring::hmac::verify(&key, &message, proof).is_ok()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingToken {
    #[serde(with = "hex_secret")]
    secret: [u8; 32],
    expires_at: u64,
}

/// The coordinator's not-yet-used join secrets.
#[derive(Debug)]
pub struct PendingTokens {
    path: PathBuf,
}

impl PendingTokens {
    pub fn new(state_dir: &Path) -> Self {
        PendingTokens {
            path: state_dir.join(PENDING_FILE),
        }
    }

    fn load(&self) -> Result<Vec<PendingToken>, ProtocolError> {
        let now = unix_now();
        Ok(match read_optional(&self.path)? {
            Some(bytes) => serde_json::from_slice::<Vec<PendingToken>>(&bytes)
                .map_err(|e| ProtocolError::CorruptState {
                    path: self.path.display().to_string(),
                    reason: e.to_string(),
                })?
                .into_iter()
                .filter(|t| t.expires_at > now)
                .collect(),
            None => Vec::new(),
        })
    }

    fn store(&self, tokens: &[PendingToken]) -> Result<(), ProtocolError> {
        let json = serde_json::to_vec_pretty(tokens)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        write_atomic(&self.path, &json, 0o600)
    }

    /// Makes a new token valid for `ttl_secs`.
    pub fn issue(
        &self,
        coordinator: Fingerprint,
        ttl_secs: u64,
    ) -> Result<JoinToken, ProtocolError> {
        let token = JoinToken::generate(coordinator);
        let mut tokens = self.load()?;
        tokens.push(PendingToken {
            secret: token.secret,
            expires_at: unix_now().saturating_add(ttl_secs),
        });
        self.store(&tokens)?;
        Ok(token)
    }

    /// Whether any unexpired token is waiting (enrollment of unknown agents is possible at all).
    pub fn any(&self) -> Result<bool, ProtocolError> {
        Ok(!self.load()?.is_empty())
    }

    /// Checks `proof` against every pending secret; the matching token is used up.
    pub fn redeem(
        &self,
        agent: &Fingerprint,
        coordinator: &Fingerprint,
        proof: &[u8],
    ) -> Result<bool, ProtocolError> {
        let mut tokens = self.load()?;
        let before = tokens.len();
        tokens.retain(|t| !proof_matches(&t.secret, agent, coordinator, proof));
        if tokens.len() == before {
            return Ok(false);
        }
        self.store(&tokens)?;
        Ok(true)
    }
}

/// The agent's side: the token it was started with, until the coordinator confirms enrollment.
#[derive(Debug)]
pub struct AgentJoin {
    path: PathBuf,
}

impl AgentJoin {
    pub fn new(state_dir: &Path) -> Self {
        AgentJoin {
            path: state_dir.join(AGENT_JOIN_FILE),
        }
    }

    pub fn save(&self, token: &JoinToken) -> Result<(), ProtocolError> {
        let json =
            serde_json::to_vec(token).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        write_atomic(&self.path, &json, 0o600)
    }

    pub fn load(&self) -> Result<Option<JoinToken>, ProtocolError> {
        match read_optional(&self.path)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ProtocolError::CorruptState {
                        path: self.path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
            None => Ok(None),
        }
    }

    pub fn clear(&self) -> Result<(), ProtocolError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProtocolError::io(&self.path, e)),
        }
    }
}

mod hex_secret {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        use serde::de::Error;
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map_err(D::Error::custom)?
            .try_into()
            .map_err(|_| D::Error::custom("secret must be 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_round_trip() {
        let token = JoinToken::generate(Fingerprint::of_der(b"coordinator"));
        let parsed: JoinToken = token.to_string().parse().expect("parse");
        assert_eq!(parsed, token);
        assert!("tightwad-join-v1:zz:zz".parse::<JoinToken>().is_err());
        assert!("other:aa:bb".parse::<JoinToken>().is_err());
    }

    #[test]
    fn proof_is_redeemed_once_and_bound_to_fingerprints() {
        let dir = tempfile::tempdir().expect("tempdir");
        let coordinator = Fingerprint::of_der(b"coordinator");
        let agent = Fingerprint::of_der(b"agent");
        let pending = PendingTokens::new(dir.path());
        let token = pending.issue(coordinator, 60).expect("issue");
        let wrong_agent = token.proof(&Fingerprint::of_der(b"other agent"));
        assert!(!pending
            .redeem(&agent, &coordinator, &wrong_agent)
            .expect("redeem"));
        let proof = token.proof(&agent);
        assert!(pending
            .redeem(&agent, &coordinator, &proof)
            .expect("redeem"));
        assert!(!pending
            .redeem(&agent, &coordinator, &proof)
            .expect("second redeem"));
    }
}
