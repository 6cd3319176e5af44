//! `tightwad hosts discover`: the agents that announce themselves on the LAN (mDNS / DNS-SD,
//! `discovery = true` in their `agent.toml`), each marked against what this coordinator trusts:
//!
//! - **enrolled**: its announced certificate fingerprint is one the coordinator pinned;
//! - **not enrolled**: shown, never trusted — enroll it with a join token (`tightwad token`);
//! - **FINGERPRINT CHANGED**: it uses the name (or the `[[hosts]]` address) of a host the
//!   coordinator pinned with another certificate, or its fingerprint differs from what the
//!   last look saw under that name. A reinstalled host, or an impostor: re-enroll it only if you
//!   know which.
//!
//! An announcement is unauthenticated, so it never adds trust: `tightwad init --discover` writes
//! `[[hosts]]` entries (where to connect), and connections still accept only pinned certificates.
//! What each look saw is kept in `discovered.json` in the coordinator's state folder.

use crate::cluster::config::{FleetConfig, HostEntry};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tightwad_protocol::discovery::{Announcement, SERVICE_TYPE};
use tightwad_protocol::trust::{PeerRole, PinnedPeer, TrustStore};
use tightwad_protocol::Fingerprint;

const LAST_LOOK_FILE: &str = "discovered.json";

#[derive(clap::Subcommand, Debug)]
pub enum HostsCommand {
    /// The agents announcing themselves on the LAN (mDNS; `discovery = true` in their
    /// agent.toml), each marked enrolled, NOT enrolled, or FINGERPRINT CHANGED. Exit status 1
    /// when a fingerprint changed.
    #[command(
        after_long_help = "Examples:\n  tightwad hosts discover\n  tightwad hosts discover --timeout 5 --json\n  tightwad -c tightwad.toml hosts discover --interface eth0"
    )]
    Discover(DiscoverArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct DiscoverArgs {
    /// Print JSON (one object per agent) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to listen for answers.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout: f64,
    /// Ask only on this network interface (repeatable; default: every interface but loopback).
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
}

/// One answer from the LAN: what the agent announced and the addresses it announced from.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub announcement: Announcement,
    pub addresses: Vec<IpAddr>,
}

impl Answer {
    /// `IP:PORT` for `[[hosts]]`: an IPv4 address when there is one (the agent's default
    /// listen address is IPv4), else the first IPv6 one.
    pub fn address(&self) -> String {
        let mut ips = self.addresses.clone();
        ips.sort_by_key(|ip| (!ip.is_ipv4(), *ip));
        match ips.first() {
            Some(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.announcement.port),
            Some(ip) => format!("{ip}:{}", self.announcement.port),
            None => format!("?:{}", self.announcement.port),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Enrolled,
    NotEnrolled,
    FingerprintChanged,
}

/// An answer marked against the coordinator's trust store, `[[hosts]]` and last look.
#[derive(Debug, Clone, Serialize)]
pub struct Discovered {
    /// The name the agent announces.
    pub name: String,
    /// `IP:PORT` to put in `[[hosts]]`.
    pub address: String,
    pub addresses: Vec<IpAddr>,
    pub port: u16,
    pub fingerprint: String,
    pub version: String,
    pub protocol: u32,
    pub status: Standing,
    /// The `[[hosts]]` / trust-store name this agent is (or claims to be).
    pub host: Option<String>,
    /// The fingerprint the coordinator pinned (or saw last) where it differs.
    pub expected_fingerprint: Option<String>,
    /// What it means and what to do.
    pub note: String,
}

/// Listens for agents' announcements for `timeout` (blocking: run it off the async runtime).
/// Answers that are not a Tightwad agent's are skipped with a warning on stderr.
pub fn browse(timeout: Duration, interfaces: &[String]) -> anyhow::Result<Vec<Answer>> {
    use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent};
    let daemon = ServiceDaemon::new().map_err(|e| {
        anyhow::anyhow!("cannot start mDNS (UDP port 5353) to discover agents: {e}")
    })?;
    let _ = daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]);
    if !interfaces.is_empty() {
        let _ = daemon.disable_interface(IfKind::All);
        daemon
            .enable_interface(
                interfaces
                    .iter()
                    .map(|i| IfKind::Name(i.clone()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| anyhow::anyhow!("--interface {interfaces:?}: {e}"))?;
    }
    let events = daemon
        .browse(SERVICE_TYPE)
        .map_err(|e| anyhow::anyhow!("browsing {SERVICE_TYPE}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut found: BTreeMap<String, Answer> = BTreeMap::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match events.recv_timeout(left) {
            Ok(ServiceEvent::ServiceResolved(service)) => {
                let txt: BTreeMap<String, String> = service
                    .get_properties()
                    .iter()
                    .map(|p| (p.key().to_string(), p.val_str().to_string()))
                    .collect();
                match Announcement::from_txt(&txt) {
                    Ok(announcement) => {
                        let mut addresses: Vec<IpAddr> = service
                            .get_addresses()
                            .iter()
                            .map(|a| a.to_ip_addr())
                            .filter(|ip| !ip.is_loopback())
                            .collect();
                        addresses.sort();
                        addresses.dedup();
                        found.insert(
                            service.get_fullname().to_string(),
                            Answer {
                                announcement,
                                addresses,
                            },
                        );
                    }
                    Err(reason) => eprintln!(
                        "warning: ignoring {} (not a Tightwad agent's announcement: {reason})",
                        service.get_fullname()
                    ),
                }
            }
            Ok(ServiceEvent::ServiceRemoved(_, fullname)) => {
                found.remove(&fullname);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    if let Ok(done) = daemon.shutdown() {
        let _ = done.recv_timeout(Duration::from_secs(1));
    }
    Ok(found.into_values().collect())
}

/// Marks each answer (pure: the trust store's agents, `[[hosts]]` and the last look are given).
pub fn classify(
    answers: &[Answer],
    hosts: &[HostEntry],
    pinned: &[PinnedPeer],
    last_look: &BTreeMap<String, Fingerprint>,
) -> Vec<Discovered> {
    let agents: Vec<&PinnedPeer> = pinned
        .iter()
        .filter(|p| p.role == PeerRole::Agent)
        .collect();
    let pinned_for = |name: &str| agents.iter().find(|p| p.name == name).copied();
    let mut out: Vec<Discovered> = answers
        .iter()
        .map(|answer| {
            let a = &answer.announcement;
            let address = answer.address();
            let mut d = Discovered {
                name: a.name.clone(),
                address: address.clone(),
                addresses: answer.addresses.clone(),
                port: a.port,
                fingerprint: a.fingerprint.to_string(),
                version: a.version.clone(),
                protocol: a.protocol,
                status: Standing::NotEnrolled,
                host: None,
                expected_fingerprint: None,
                note: String::new(),
            };
            if let Some(peer) = agents.iter().find(|p| p.fingerprint == a.fingerprint) {
                d.status = Standing::Enrolled;
                d.host = Some(peer.name.clone());
                d.note = if peer.name == a.name {
                    "pinned by this coordinator".into()
                } else {
                    format!("pinned as {:?}; it now calls itself {:?}", peer.name, a.name)
                };
                if !hosts.iter().any(|h| h.name == peer.name) {
                    d.note.push_str("; not in [[hosts]] yet (`tightwad init --discover`)");
                }
                return d;
            }
            // A known host's name or [[hosts]] address with another certificate.
            let claimed = hosts
                .iter()
                .filter(|h| h.name == a.name || same_address(&h.address, answer))
                .map(|h| h.name.as_str())
                .chain(std::iter::once(a.name.as_str()))
                .find_map(&pinned_for);
            if let Some(peer) = claimed {
                d.status = Standing::FingerprintChanged;
                d.host = Some(peer.name.clone());
                d.expected_fingerprint = Some(peer.fingerprint.to_string());
                d.note = format!(
                    "announces itself as host {:?} with certificate {} but this coordinator pinned {} for it: NOT trusted. If {:?} was reinstalled, re-enroll it (`tightwad token`, then `tightwad-agent --join <token>` on it); otherwise something else on the LAN claims its name",
                    peer.name,
                    a.fingerprint.short(),
                    peer.fingerprint.short(),
                    peer.name
                );
                return d;
            }
            d.host = hosts
                .iter()
                .find(|h| h.name == a.name || same_address(&h.address, answer))
                .map(|h| h.name.clone());
            if let Some(seen) = last_look.get(&a.name).filter(|fp| **fp != a.fingerprint) {
                d.status = Standing::FingerprintChanged;
                d.expected_fingerprint = Some(seen.to_string());
                d.note = format!(
                    "not enrolled, and its certificate changed since the last look ({} then, {} now): NOT trusted. Enroll it only if you know why",
                    seen.short(),
                    a.fingerprint.short()
                );
                return d;
            }
            d.note = format!(
                "not enrolled: never trusted until you run `tightwad token` here and `tightwad-agent --join <token>` on {}",
                a.name
            );
            if d.host.is_none() {
                d.note.push_str("; `tightwad init --discover` adds it to [[hosts]]");
            }
            d
        })
        .collect();
    out.sort_by(|x, y| {
        (x.name.as_str(), x.address.as_str()).cmp(&(y.name.as_str(), y.address.as_str()))
    });
    out
}

/// Whether a `[[hosts]]` address (`IP`, `IP:PORT`, `[IPv6]:PORT`) is one the answer came from.
fn same_address(configured: &str, answer: &Answer) -> bool {
    let (ip, port) = match configured.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip(), sa.port()),
        Err(_) => match configured.parse::<IpAddr>() {
            Ok(ip) => (ip, tightwad_protocol::DEFAULT_AGENT_PORT),
            Err(_) => return false,
        },
    };
    port == answer.announcement.port && answer.addresses.contains(&ip)
}

fn load_last_look(state_dir: &Path) -> BTreeMap<String, Fingerprint> {
    std::fs::read(state_dir.join(LAST_LOOK_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<LastLook>(&bytes).ok())
        .map(|l| l.agents)
        .unwrap_or_default()
}

#[derive(Serialize, Deserialize, Default)]
struct LastLook {
    agents: BTreeMap<String, Fingerprint>,
}

fn save_last_look(state_dir: &Path, found: &[Discovered], mut last: BTreeMap<String, Fingerprint>) {
    for d in found {
        if let Ok(fp) = d.fingerprint.parse() {
            last.insert(d.name.clone(), fp);
        }
    }
    let result = serde_json::to_vec_pretty(&LastLook { agents: last })
        .map_err(std::io::Error::other)
        .and_then(|json| {
            std::fs::create_dir_all(state_dir)?;
            tightwad_protocol::fsutil::write_atomic(&state_dir.join(LAST_LOOK_FILE), &json, 0o600)
                .map_err(std::io::Error::other)
        });
    if let Err(e) = result {
        eprintln!(
            "warning: cannot record this look in {}: {e}",
            state_dir.join(LAST_LOOK_FILE).display()
        );
    }
}

/// Browses, marks each answer and records the look. The coordinator's identity is not needed
/// (and not created): only its pinned agents are read.
pub async fn discover(
    fleet: &FleetConfig,
    timeout: Duration,
    interfaces: &[String],
) -> anyhow::Result<Vec<Discovered>> {
    let interfaces = interfaces.to_vec();
    let answers = tokio::task::spawn_blocking(move || browse(timeout, &interfaces))
        .await
        .context("the discovery thread failed")??;
    let state_dir = fleet.state_dir();
    let trust = TrustStore::load(&state_dir).context("loading the coordinator's pinned agents")?;
    let last = load_last_look(&state_dir);
    let found = classify(&answers, &fleet.hosts, &trust.peers(), &last);
    save_last_look(&state_dir, &found, last);
    Ok(found)
}

/// The table `tightwad hosts discover` prints.
pub fn render(found: &[Discovered], timeout: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if found.is_empty() {
        let _ = writeln!(
            out,
            "no agent answered within {:.1} s. Agents announce only with `discovery = true` in their agent.toml; mDNS (UDP 5353, multicast 224.0.0.251) must cross your network. You can still list hosts by address in [[hosts]].",
            timeout.as_secs_f64()
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} agent{} answered within {:.1} s:",
        found.len(),
        if found.len() == 1 { "" } else { "s" },
        timeout.as_secs_f64()
    );
    let w_name = found.iter().map(|d| d.name.len()).max().unwrap_or(4).max(4);
    let w_addr = found
        .iter()
        .map(|d| d.address.len())
        .max()
        .unwrap_or(7)
        .max(7);
    let _ = writeln!(
        out,
        "  {:w_name$}  {:w_addr$}  {:8}  {:16}  STATUS",
        "NAME", "ADDRESS", "VERSION", "FINGERPRINT"
    );
    for d in found {
        let status = match d.status {
            Standing::Enrolled => "enrolled".to_string(),
            Standing::NotEnrolled => "NOT enrolled".to_string(),
            Standing::FingerprintChanged => "FINGERPRINT CHANGED".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:w_name$}  {:w_addr$}  {:8}  {:16}  {status}",
            d.name,
            d.address,
            d.version,
            &d.fingerprint[..16.min(d.fingerprint.len())]
        );
    }
    for d in found {
        match d.status {
            Standing::FingerprintChanged => {
                let _ = writeln!(
                    out,
                    "\n!!! FINGERPRINT CHANGED: {} at {}\n!!! {}",
                    d.name, d.address, d.note
                );
            }
            _ => {
                let _ = writeln!(out, "  {}: {}", d.name, d.note);
            }
        }
    }
    out
}

/// `tightwad hosts …`.
pub async fn run(cmd: HostsCommand, config: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        HostsCommand::Discover(args) => {
            anyhow::ensure!(
                args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 600.0,
                "--timeout must be between 0 and 600 seconds"
            );
            let timeout = Duration::from_secs_f64(args.timeout);
            let fleet = FleetConfig::load(config)?;
            let found = discover(&fleet, timeout, &args.interfaces).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", render(&found, timeout));
            }
            let changed = found
                .iter()
                .any(|d| d.status == Standing::FingerprintChanged);
            Ok(if changed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `tightwad init --discover`: the `[[hosts]]` entries for what answered, `given` first (a
/// discovered agent of a name already given is left out). Agents whose fingerprint changed are
/// left out, loudly, on stderr.
pub async fn hosts_for_init(
    fleet: &FleetConfig,
    timeout: Duration,
) -> anyhow::Result<Vec<HostEntry>> {
    let found = discover(fleet, timeout, &[]).await?;
    let mut hosts = fleet.hosts.clone();
    if found.is_empty() {
        eprint!("{}", render(&found, timeout));
    }
    for d in found {
        let name = d.host.clone().unwrap_or_else(|| d.name.clone());
        match d.status {
            Standing::FingerprintChanged => {
                eprintln!(
                    "!!! FINGERPRINT CHANGED: leaving {} ({}) out of [[hosts]]: {}",
                    d.name, d.address, d.note
                );
                continue;
            }
            Standing::NotEnrolled => eprintln!(
                "found {} at {} (NOT enrolled: `tightwad token`, then `tightwad-agent --join <token>` on it)",
                d.name, d.address
            ),
            Standing::Enrolled => eprintln!("found {} at {} (enrolled)", name, d.address),
        }
        if hosts.iter().any(|h| h.name == name) {
            continue;
        }
        hosts.push(HostEntry {
            name,
            address: d.address,
            build_backend: None,
        });
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(name: &str, ip: &str, fp: u8) -> Answer {
        Answer {
            announcement: Announcement::ours(name, 7420, Fingerprint([fp; 32])),
            addresses: vec![ip.parse().expect("ip")],
        }
    }

    fn pin(name: &str, fp: u8) -> PinnedPeer {
        PinnedPeer {
            name: name.into(),
            fingerprint: Fingerprint([fp; 32]),
            role: PeerRole::Agent,
            pinned_at: 0,
        }
    }

    fn host(name: &str, address: &str) -> HostEntry {
        HostEntry {
            name: name.into(),
            address: address.into(),
            build_backend: None,
        }
    }

    #[test]
    fn answers_are_enrolled_not_enrolled_or_changed() {
        let answers = [
            answer("gpu-box", "10.0.0.2", 1),
            answer("desktop", "10.0.0.3", 2),
            // Uses gpu-box's name with another key.
            answer("gpu-box", "10.0.0.9", 3),
            // Sits at the address [[hosts]] lists for nas, with another key than nas's pin.
            answer("storage", "10.0.0.5", 4),
            // Unpinned, but another key than the last look saw under this name.
            answer("laptop", "10.0.0.7", 5),
        ];
        let hosts = [host("gpu-box", "10.0.0.2:7420"), host("nas", "10.0.0.5")];
        let pinned = [pin("gpu-box", 1), pin("nas", 9)];
        let last: BTreeMap<String, Fingerprint> =
            [("laptop".to_string(), Fingerprint([6; 32]))].into();
        let found = classify(&answers, &hosts, &pinned, &last);
        let by = |name: &str, addr: &str| {
            found
                .iter()
                .find(|d| d.name == name && d.address == addr)
                .unwrap_or_else(|| panic!("{name} {addr} in {found:?}"))
        };
        assert_eq!(by("gpu-box", "10.0.0.2:7420").status, Standing::Enrolled);
        assert_eq!(by("desktop", "10.0.0.3:7420").status, Standing::NotEnrolled);
        let impostor = by("gpu-box", "10.0.0.9:7420");
        assert_eq!(impostor.status, Standing::FingerprintChanged);
        assert_eq!(
            impostor.expected_fingerprint.as_deref(),
            Some(Fingerprint([1; 32]).to_string().as_str())
        );
        let at_nas = by("storage", "10.0.0.5:7420");
        assert_eq!(at_nas.status, Standing::FingerprintChanged);
        assert_eq!(at_nas.host.as_deref(), Some("nas"));
        assert_eq!(
            by("laptop", "10.0.0.7:7420").status,
            Standing::FingerprintChanged
        );
        let text = render(&found, Duration::from_secs(3));
        assert!(
            text.contains("!!! FINGERPRINT CHANGED: gpu-box at 10.0.0.9:7420"),
            "{text}"
        );
        assert!(text.contains("NOT enrolled"), "{text}");
    }

    #[test]
    fn addresses_prefer_ipv4() {
        let mut a = answer("x", "fe80::1", 1);
        a.addresses.push("10.1.2.3".parse().expect("ip"));
        assert_eq!(a.address(), "10.1.2.3:7420");
        a.addresses.truncate(1);
        assert_eq!(a.address(), "[fe80::1]:7420");
    }
}
