//! What an agent announces on the LAN over mDNS / DNS-SD (when its `discovery` is on), shared by
//! the agent that announces and the coordinator that browses (`tightwad hosts discover`).
//!
//! An announcement only says where an agent is and which certificate it claims to have. It is
//! unauthenticated (anyone on the LAN can announce anything), so it never creates trust: the
//! coordinator still enrolls with a join token and connects with pinned fingerprints only.

use crate::Fingerprint;
use std::collections::BTreeMap;

/// The DNS-SD service type agents announce (QUIC runs over UDP).
pub const SERVICE_TYPE: &str = "_tightwad-agent._udp.local.";

/// TXT keys (each value is short: the whole record stays far below DNS-SD's limits).
pub const TXT_NAME: &str = "name";
pub const TXT_PORT: &str = "port";
pub const TXT_FINGERPRINT: &str = "fp";
pub const TXT_VERSION: &str = "version";
pub const TXT_PROTOCOL: &str = "proto";

/// One agent's announcement: its TXT record, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The agent's `name` (what the coordinator's `[[hosts]]` and trust store call it).
    pub name: String,
    /// UDP port of its QUIC endpoint.
    pub port: u16,
    /// sha256 of the certificate it claims to present.
    pub fingerprint: Fingerprint,
    /// Tightwad version of the agent.
    pub version: String,
    /// Peer protocol version it speaks.
    pub protocol: u32,
}

impl Announcement {
    /// This build's announcement for an agent called `name` listening on `port`.
    pub fn ours(name: &str, port: u16, fingerprint: Fingerprint) -> Self {
        Announcement {
            name: name.to_string(),
            port,
            fingerprint,
            version: crate::SOFTWARE_VERSION.to_string(),
            protocol: crate::PROTOCOL_VERSION,
        }
    }

    /// The TXT record's key/value pairs.
    pub fn txt(&self) -> Vec<(&'static str, String)> {
        vec![
            (TXT_NAME, self.name.clone()),
            (TXT_PORT, self.port.to_string()),
            (TXT_FINGERPRINT, self.fingerprint.to_string()),
            (TXT_VERSION, self.version.clone()),
            (TXT_PROTOCOL, self.protocol.to_string()),
        ]
    }

    /// Reads a TXT record received from the network. Every value is checked: a record that is
    /// not a Tightwad agent's (or is garbled) is an error saying which key is wrong.
    pub fn from_txt(txt: &BTreeMap<String, String>) -> Result<Self, String> {
        let get = |key: &str| {
            txt.get(key)
                .map(String::as_str)
                .ok_or_else(|| format!("TXT key {key:?} missing"))
        };
        let name = get(TXT_NAME)?;
        if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
            return Err(format!("TXT {TXT_NAME} {name:?} is not a host name"));
        }
        let port = get(TXT_PORT)?
            .parse::<u16>()
            .map_err(|_| format!("TXT {TXT_PORT} is not a port"))?;
        let fingerprint = get(TXT_FINGERPRINT)?
            .parse::<Fingerprint>()
            .map_err(|e| format!("TXT {TXT_FINGERPRINT}: {e}"))?;
        let version = get(TXT_VERSION)?;
        if version.len() > 64 || version.chars().any(char::is_control) {
            return Err(format!("TXT {TXT_VERSION} is not a version"));
        }
        let protocol = get(TXT_PROTOCOL)?
            .parse::<u32>()
            .map_err(|_| format!("TXT {TXT_PROTOCOL} is not a number"))?;
        Ok(Announcement {
            name: name.to_string(),
            port,
            fingerprint,
            version: version.to_string(),
            protocol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_round_trips_and_garbage_is_refused() {
        let a = Announcement::ours("gpu-box", 7420, Fingerprint([7; 32]));
        let txt: BTreeMap<String, String> = a
            .txt()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Announcement::from_txt(&txt), Ok(a));
        for (key, bad) in [
            (TXT_PORT, "70000"),
            (TXT_FINGERPRINT, "abc"),
            (TXT_NAME, ""),
            (TXT_PROTOCOL, "x"),
        ] {
            let mut garbled = txt.clone();
            garbled.insert(key.to_string(), bad.to_string());
            let err = Announcement::from_txt(&garbled).expect_err(key);
            assert!(err.contains(key), "{err}");
        }
        let mut missing = txt.clone();
        missing.remove(TXT_FINGERPRINT);
        assert!(Announcement::from_txt(&missing).is_err());
    }
}
