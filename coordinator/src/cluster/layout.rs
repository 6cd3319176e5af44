//! Which agent process plays which part, read from the coordinator's config. `tightwad doctor`
//! checks this layout before anything starts; `tightwad up` starts RPC pools and native pairings
//! from it; `tightwad status` shows the pools.
//!
//! ```toml
//! [[processes]]                    # a process an agent supervises, and its part
//! host = "gpu-box"                 # a [[hosts]] name
//! process = "target"               # the agent's [[process]] name on that host
//! role = "target"                  # "target" | "draft"
//! pairing = "llama-70b"            # the [[pairings]] entry it serves (default: the first)
//!
//! [[pools]]                        # llama.cpp RPC: one model over several hosts' memory
//! name = "big"
//! coordinator = "gpu-box/target"   # host/process: a llama-server, started with --rpc <workers>
//! workers = ["desktop/rpc"]        # host/process: rpc-servers (ggml-rpc-server)
//!
//! [[native_pairings]]              # llama.cpp's own speculation, the draft on another host
//! name = "llama-70b"
//! target = "gpu-box/target"        # llama-server on the target host
//! draft_worker = "desktop/rpc"     # rpc-server on the draft host: the draft model runs there
//! draft_model = "/models/draft.gguf"   # path on the TARGET host (llama-server loads it and ships it)
//! draft_tokens = 8                 # optional: --spec-draft-n-max
//! ```
//! A `[[pairings]]` entry with `native = true` is served by llama.cpp's own speculation (set up
//! by a `[[native_pairings]]` entry for the same target); doctor then measures its payoff.
//!
//! Unknown keys are ignored: the same file carries the proxy's and the fleet's settings.

use anyhow::Context;
use serde::Deserialize;
use std::path::Path;

/// `host/process`: one supervised process on one host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ProcessRef {
    pub host: String,
    pub process: String,
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.process)
    }
}

impl std::str::FromStr for ProcessRef {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (host, process) = s
            .split_once('/')
            .filter(|(h, p)| !h.is_empty() && !p.is_empty())
            .with_context(|| format!("{s:?} must be \"host/process\""))?;
        Ok(ProcessRef {
            host: host.to_string(),
            process: process.to_string(),
        })
    }
}

impl<'de> Deserialize<'de> for ProcessRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Target,
    Draft,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProcessEntry {
    pub host: String,
    pub process: String,
    pub role: Role,
    pub pairing: Option<String>,
}

impl ProcessEntry {
    pub fn reference(&self) -> ProcessRef {
        ProcessRef {
            host: self.host.clone(),
            process: self.process.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PoolEntry {
    pub name: String,
    pub coordinator: ProcessRef,
    pub workers: Vec<ProcessRef>,
    /// `tightwad up` starts the coordinator with the placement planner's flags (`-ngl`,
    /// `--tensor-split`, `--n-cpu-moe`/`-ot` for experts, `-c`) in place of its own, computed
    /// from the model's GGUF and each member's memory — what `tightwad inspect --plan` prints.
    #[serde(default)]
    pub place: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NativePairingEntry {
    pub name: String,
    pub target: ProcessRef,
    pub draft_worker: ProcessRef,
    pub draft_model: String,
    pub draft_tokens: Option<u32>,
}

/// The `[[pairings]]` keys the fleet commands read (the proxy reads the rest).
#[derive(Debug, Clone, Deserialize)]
pub struct PairingUrls {
    pub name: Option<String>,
    pub target: String,
    pub draft: Option<String>,
    /// `None`: the proxy's default for the target's verification path
    /// ([`tightwad_serve::engine::draft_length`]).
    #[serde(default)]
    pub draft_tokens: Option<usize>,
    /// A draft ends after a token its model gave less than this (doctor checks, where it is
    /// above 0, that the draft server can; [`tightwad_serve::engine::DEFAULT_DRAFT_P_MIN`] when
    /// unset).
    #[serde(default = "default_draft_p_min")]
    pub draft_p_min: f64,
    /// The target runs llama.cpp's own speculation (native pairing); the proxy only steers it.
    #[serde(default)]
    pub native: bool,
    /// The target's and the draft's server software (llama.cpp unless `vllm`).
    #[serde(default)]
    pub target_kind: tightwad_serve::backend::BackendKind,
    #[serde(default)]
    pub draft_kind: tightwad_serve::backend::BackendKind,
}

fn default_draft_p_min() -> f64 {
    tightwad_serve::engine::DEFAULT_DRAFT_P_MIN
}

impl PairingUrls {
    /// The name clients use (the proxy's default names, so the two agree).
    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| {
            if index == 0 {
                "tightwad".into()
            } else {
                format!("tightwad-{index}")
            }
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Layout {
    #[serde(default)]
    pub processes: Vec<ProcessEntry>,
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
    #[serde(default)]
    pub native_pairings: Vec<NativePairingEntry>,
    #[serde(default)]
    pub pairings: Vec<PairingUrls>,
}

impl Layout {
    /// Reads the layout from `path`; a missing file is an empty layout.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Layout::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The pairing name a `[[processes]]` entry serves.
    pub fn pairing_of(&self, entry: &ProcessEntry) -> Option<String> {
        match &entry.pairing {
            Some(name) => Some(name.clone()),
            None => self.pairings.first().map(|p| p.display_name(0)),
        }
    }

    /// The process playing `role` for the pairing named `pairing`.
    pub fn process_for(&self, pairing: &str, role: Role) -> Option<ProcessRef> {
        self.processes
            .iter()
            .find(|p| p.role == role && self.pairing_of(p).as_deref() == Some(pairing))
            .map(ProcessEntry::reference)
    }
}

/// The host part of an agent address (`10.0.0.3:7420` → `10.0.0.3`): the host's LAN address,
/// which its other servers (rpc-server, llama-server) listen on too.
pub fn host_ip(agent_address: &str) -> &str {
    match agent_address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.trim_matches(['[', ']']),
        _ => agent_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_layout_and_ignores_other_keys() {
        let layout = Layout::parse(
            r#"
            listen = "0.0.0.0:8088"
            [[hosts]]
            name = "gpu-box"
            address = "10.0.0.2:7420"
            [[pairings]]
            name = "llama-70b"
            target = "http://10.0.0.2:8080"
            draft = "http://10.0.0.3:8081"
            [[processes]]
            host = "gpu-box"
            process = "target"
            role = "target"
            [[pools]]
            name = "big"
            coordinator = "gpu-box/target"
            workers = ["desktop/rpc"]
            [[native_pairings]]
            name = "n"
            target = "gpu-box/target"
            draft_worker = "desktop/rpc"
            draft_model = "/m/d.gguf"
            "#,
        )
        .expect("layout");
        assert_eq!(
            layout
                .process_for("llama-70b", Role::Target)
                .map(|p| p.to_string()),
            Some("gpu-box/target".to_string())
        );
        assert_eq!(layout.pools[0].workers[0].host, "desktop");
        assert!(Layout::parse("[[pools]]\nname='x'\ncoordinator='nohost'\nworkers=[]\n").is_err());
        assert_eq!(host_ip("10.0.0.3:7420"), "10.0.0.3");
        assert_eq!(host_ip("gpu-box"), "gpu-box");
    }
}
