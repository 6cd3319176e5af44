//! LAN discovery, opt-in: with `discovery = true` (or a `[discovery]` table) in `agent.toml` the
//! agent announces itself over mDNS / DNS-SD (`_tightwad-agent._udp.local.`) with its name, QUIC
//! port, certificate fingerprint and version, so `tightwad hosts discover` and
//! `tightwad init --discover` find it. Off by default: an agent stays silent on the LAN unless
//! asked.
//!
//! Announcing grants nothing. The coordinator still enrolls an agent only with a join token, and
//! connects only to pinned certificates; the announced fingerprint is a claim it compares with
//! what it pinned, to spot a host whose key changed or an impostor using a known host's name.

use mdns_sd::{IfKind, ServiceDaemon, ServiceInfo};
use serde::{Deserialize, Deserializer};
use std::net::{IpAddr, SocketAddr};
use tightwad_protocol::discovery::{Announcement, SERVICE_TYPE};
use tightwad_protocol::Fingerprint;

/// `discovery` in agent.toml: `discovery = true`, or
///
/// ```toml
/// [discovery]
/// enabled = true            # the default once the table is there
/// interfaces = ["eth0"]     # announce only on these (default: every interface but loopback)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub enabled: bool,
    pub interfaces: Vec<String>,
}

/// The two spellings of `discovery` in agent.toml, for its JSON Schema only (the reading is the
/// hand-written `Deserialize` below, which also names both in its errors).
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum DiscoverySetting {
    /// `discovery = true`: announce on every interface but loopback.
    Switch(bool),
    /// `[discovery]` with `enabled` and `interfaces`.
    Table(DiscoveryTable),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryTable {
    /// Announce (default true once the table is there).
    #[serde(default = "yes")]
    enabled: bool,
    /// Announce only on these interfaces (default: every interface but loopback).
    #[serde(default)]
    interfaces: Vec<String>,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for DiscoveryConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DiscoveryConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "`discovery = true|false` or a `[discovery]` table (enabled, interfaces)",
                )
            }
            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<Self::Value, E> {
                Ok(DiscoveryConfig {
                    enabled,
                    interfaces: Vec::new(),
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let table =
                    DiscoveryTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(DiscoveryConfig {
                    enabled: table.enabled,
                    interfaces: table.interfaces,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A running announcement; says goodbye on the LAN (and stops the mDNS thread) when dropped.
pub struct Announcer {
    daemon: ServiceDaemon,
    fullname: String,
}

/// A DNS label from the agent's name: lower-case letters, digits and dashes.
fn host_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let label = label.trim_matches('-').to_string();
    if label.is_empty() {
        "tightwad-agent".into()
    } else {
        label
    }
}

impl Announcer {
    /// Starts announcing the agent `name` whose QUIC endpoint is bound to `listen`. A specific
    /// listen address is announced as such; an unspecified one (`0.0.0.0`) announces every
    /// address of the chosen interfaces, following them as they change.
    pub fn start(
        config: &DiscoveryConfig,
        name: &str,
        listen: SocketAddr,
        fingerprint: Fingerprint,
    ) -> anyhow::Result<Announcer> {
        let daemon = ServiceDaemon::new().map_err(|e| {
            anyhow::anyhow!("starting mDNS (UDP 5353) for discovery: {e}; set `discovery = false` in agent.toml to run without it")
        })?;
        let _ = daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]);
        if !config.interfaces.is_empty() {
            let _ = daemon.disable_interface(IfKind::All);
            daemon
                .enable_interface(
                    config
                        .interfaces
                        .iter()
                        .map(|i| IfKind::Name(i.clone()))
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| {
                    anyhow::anyhow!("discovery interfaces {:?}: {e}", config.interfaces)
                })?;
        }
        let announcement = Announcement::ours(name, listen.port(), fingerprint);
        // The instance and host names carry the key's first hex digits: two agents claiming one
        // name (a re-installed host, an impostor) stay two services instead of merging into one
        // whose addresses and TXT records mix; the TXT record keeps the plain name.
        let fp = announcement.fingerprint.to_string();
        let tag = fp.get(..8).unwrap_or(&fp).to_string();
        let instance = format!("{name}-{tag}");
        let host = format!("{}-{tag}.local.", host_label(name));
        let addresses: Vec<IpAddr> = if listen.ip().is_unspecified() {
            Vec::new()
        } else {
            vec![listen.ip()]
        };
        let txt = announcement.txt();
        let properties: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &host,
            &addresses[..],
            listen.port(),
            &properties[..],
        )
        .map_err(|e| anyhow::anyhow!("the discovery announcement for {name:?}: {e}"))?;
        if addresses.is_empty() {
            info = info.enable_addr_auto();
        }
        if !config.interfaces.is_empty() {
            info.set_interfaces(
                config
                    .interfaces
                    .iter()
                    .map(|i| IfKind::Name(i.clone()))
                    .collect(),
            );
        }
        let fullname = info.get_fullname().to_string();
        daemon
            .register(info)
            .map_err(|e| anyhow::anyhow!("announcing {fullname}: {e}"))?;
        tracing::info!(service = %fullname, port = listen.port(), "announcing this agent on the LAN (mDNS)");
        Ok(Announcer { daemon, fullname })
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        // A goodbye packet, so browsers forget us at once rather than at the record's TTL.
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrap {
        #[serde(default)]
        discovery: DiscoveryConfig,
    }

    #[test]
    fn discovery_is_off_unless_asked_and_takes_both_forms() {
        let off: Wrap = toml::from_str("").expect("empty");
        assert!(!off.discovery.enabled);
        let on: Wrap = toml::from_str("discovery = true").expect("bool");
        assert!(on.discovery.enabled);
        let table: Wrap = toml::from_str("[discovery]\ninterfaces = [\"eth0\"]").expect("table");
        assert_eq!(
            table.discovery,
            DiscoveryConfig {
                enabled: true,
                interfaces: vec!["eth0".into()]
            }
        );
        let err = toml::from_str::<Wrap>("[discovery]\ninterface = \"eth0\"")
            .err()
            .expect("unknown key refused")
            .to_string();
        assert!(err.contains("interface"), "{err}");
        assert!(toml::from_str::<Wrap>("discovery = \"yes\"").is_err());
    }

    #[test]
    fn host_labels_are_dns_safe() {
        assert_eq!(host_label("GPU_Box 2"), "gpu-box-2");
        assert_eq!(host_label("__"), "tightwad-agent");
    }
}
