//! Who may use the proxy a written config describes — one rule for every config `tightwad init`
//! writes (from flags, from the agents, or converted from a Python `cluster.yaml`): `listen` is
//! the proxy's own default (127.0.0.1:8088) unless asked otherwise, and a config whose `listen`
//! reaches beyond this machine carries a generated API key. Asked for none (`--no-api-key`), the
//! file and stderr both say loudly that anyone on the network may use the proxy.

use std::net::SocketAddr;

/// What the written config does about API keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Loopback only: no key needed (one may still be added).
    Local,
    /// Reaches the network; clients send this generated key.
    Generated(String),
    /// Reaches the network and already has a key (converted from the old config).
    Keyed,
    /// Reaches the network with no key, as asked (`--no-api-key`).
    Open,
}

/// The proxy's default listen address, the one `tightwad init` writes unless told `--listen`.
pub fn default_listen() -> SocketAddr {
    tightwad_serve::config::ProxyConfig::default().listen
}

/// Whether clients on other machines can reach a proxy listening on `listen`.
pub fn reaches_the_network(listen: &SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

/// A fresh API key: `sk-tightwad-` and 32 hex digits, 128 bits from `rand`'s thread-local CSPRNG
/// (seeded by the OS).
pub fn generate_key() -> String {
    format!("sk-tightwad-{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// The rule: see the module docs.
pub fn decide(listen: &SocketAddr, has_key: bool, no_api_key: bool) -> Access {
    if !reaches_the_network(listen) {
        Access::Local
    } else if has_key {
        Access::Keyed
    } else if no_api_key {
        Access::Open
    } else {
        Access::Generated(generate_key())
    }
}

/// The warning for [`Access::Open`], written into the file (as comments) and printed on stderr.
pub fn open_warning(listen: &SocketAddr) -> String {
    format!(
        "WARNING: this proxy listens on {listen}, beyond this machine, with NO API key: anyone who can reach it can use it. Add api_keys = [\"...\"], or listen on 127.0.0.1."
    )
}

impl Access {
    /// The config lines (`api_keys`, or the comment that explains why there is none).
    pub fn lines(&self, listen: &SocketAddr) -> String {
        match self {
            Access::Local => "# api_keys = [\"sk-local-1\"]     # optional on loopback: clients send Authorization: Bearer <key>\n".into(),
            Access::Generated(key) => format!(
                "api_keys = [\"{key}\"]   # generated: listen reaches the network; clients send Authorization: Bearer <key>\n"
            ),
            Access::Keyed => String::new(),
            Access::Open => format!("# {}\n", open_warning(listen)),
        }
    }

    /// What to tell the person who ran `init`, on stderr.
    pub fn notice(&self, listen: &SocketAddr) -> Option<String> {
        match self {
            Access::Generated(key) => Some(format!(
                "listen = {listen} reaches the network, so the config carries a generated API key; clients send `Authorization: Bearer {key}` (pass --listen 127.0.0.1:8088 for a local-only proxy, or --no-api-key to go without)"
            )),
            Access::Open => Some(open_warning(listen)),
            Access::Local | Access::Keyed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_listen_gets_a_key_or_a_loud_warning_and_loopback_needs_none() {
        let lan: SocketAddr = "0.0.0.0:8088".parse().expect("addr");
        let local = default_listen();
        assert!(local.ip().is_loopback(), "the proxy's default is loopback");
        assert_eq!(decide(&local, false, false), Access::Local);
        let Access::Generated(key) = decide(&lan, false, false) else {
            panic!("a network listen without a key gets one");
        };
        assert!(
            key.starts_with("sk-tightwad-") && key.len() == 12 + 32,
            "{key}"
        );
        assert_ne!(key, generate_key(), "keys are random");
        assert_eq!(decide(&lan, true, false), Access::Keyed);
        let open = decide(&lan, false, true);
        assert_eq!(open, Access::Open);
        assert!(open.lines(&lan).contains("NO API key"));
        assert!(open.notice(&lan).is_some_and(|n| n.contains("WARNING")));
    }
}
