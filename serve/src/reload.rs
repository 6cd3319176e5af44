//! Re-reading the configuration without a restart (SIGHUP, `tightwad reload`).
//!
//! The pairings live in a [`PairingSet`]: each request takes the pairing it is served by once, at
//! its start, and keeps that `Arc` to the end, so a request in flight finishes on the settings it
//! started with. A reload builds a new pairing only where its settings changed (an unchanged one
//! keeps its measurements, controller and operator overrides) and swaps the set at once.
//!
//! A reload changes the pairings' settings (URLs, draft tokens, aliases, timeouts, …); adding or
//! removing a pairing, and the listener's and limits' settings, need a restart, and a reload that
//! asks for them is refused with a message that says so (nothing is changed then).

use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use thiserror::Error;

use crate::config::{Loaded, ProxyConfig};
use crate::engine::Pairing;
use crate::metrics::Metrics;

/// The pairings being served; replaced as a whole by a reload.
pub struct PairingSet {
    current: RwLock<Arc<Vec<Arc<Pairing>>>>,
}

impl PairingSet {
    pub fn new(pairings: Vec<Arc<Pairing>>) -> Self {
        PairingSet {
            current: RwLock::new(Arc::new(pairings)),
        }
    }

    /// The pairings now. A caller keeps what it got for as long as it needs (a request, to its
    /// end), whatever reloads happen meanwhile.
    pub fn current(&self) -> Arc<Vec<Arc<Pairing>>> {
        match self.current.read() {
            Ok(set) => set.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, pairings: Vec<Arc<Pairing>>) {
        let next = Arc::new(pairings);
        match self.current.write() {
            Ok(mut set) => *set = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error("the new configuration is invalid, the running one is kept: {0}")]
    Invalid(String),
    #[error("{0} needs a restart; a reload changes the settings of the pairings there are (nothing was changed)")]
    NeedsRestart(String),
}

/// What a reload did, per pairing name, and what the new configuration says to the operator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub warnings: Vec<String>,
}

/// Re-reads the configuration the way it was read at startup (file, environment, flags) and
/// checks it; the error is the message for the operator.
pub type Reloader = Arc<dyn Fn() -> Result<Loaded, String> + Send + Sync>;

/// How a running proxy reloads: the reader, and the configuration it runs now (to tell which
/// settings a reload cannot apply).
pub struct Reloading {
    reader: Reloader,
    running: Mutex<ProxyConfig>,
}

impl Reloading {
    pub fn new(reader: Reloader, running: ProxyConfig) -> Self {
        Reloading {
            reader,
            running: Mutex::new(running),
        }
    }

    /// Read the configuration again and swap in the pairings whose settings changed.
    pub(crate) fn reload(
        &self,
        set: &PairingSet,
        metrics: &Metrics,
    ) -> Result<ReloadReport, ReloadError> {
        let loaded = (self.reader)().map_err(ReloadError::Invalid)?;
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut report = apply(set, metrics, &loaded.config)?;
        report.warnings = loaded.warnings;
        let pending = restart_only_changes(&running, &loaded.config);
        if !pending.is_empty() {
            report.warnings.push(format!(
                "{} changed; {} at the next restart (a reload applies the pairings' settings)",
                pending.join(", "),
                if pending.len() == 1 {
                    "it applies"
                } else {
                    "they apply"
                }
            ));
        }
        // What runs now: the new pairings, the old listener and limits.
        running.pairings = loaded.config.pairings;
        Ok(report)
    }
}

/// The top-level keys whose values differ between `running` and `new` (all but the pairings
/// need a restart).
fn restart_only_changes(running: &ProxyConfig, new: &ProxyConfig) -> Vec<String> {
    let table = |c: &ProxyConfig| {
        let mut t = toml::Table::try_from(c).unwrap_or_default();
        t.remove("pairings");
        t
    };
    let (old, new) = (table(running), table(new));
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Build the pairings of `config` and swap them in, keeping every pairing whose settings are the
/// same. `config` must be validated.
pub(crate) fn apply(
    set: &PairingSet,
    metrics: &Metrics,
    config: &ProxyConfig,
) -> Result<ReloadReport, ReloadError> {
    let old = set.current();
    let wanted: Vec<_> = config
        .pairings
        .iter()
        .enumerate()
        .map(|(i, entry)| entry.to_pairing_config(i))
        .collect();
    let old_names: Vec<&str> = old.iter().map(|p| p.config.name.as_str()).collect();
    let new_names: Vec<&str> = wanted.iter().map(|c| c.name.as_str()).collect();
    if old_names != new_names {
        return Err(ReloadError::NeedsRestart(format!(
            "changing the pairings' names or their order (running: {}; file: {})",
            old_names.join(", "),
            new_names.join(", ")
        )));
    }
    let mut report = ReloadReport::default();
    let mut next = Vec::with_capacity(wanted.len());
    for (running, pc) in old.iter().zip(wanted) {
        if running.config == pc {
            report.unchanged.push(pc.name.clone());
            next.push(running.clone());
            continue;
        }
        let name = pc.name.clone();
        let pairing = Pairing::new(pc, metrics.pairing(&name))
            .map_err(|e| ReloadError::Invalid(format!("pairing {name:?}: {e}")))?;
        report.changed.push(name);
        next.push(Arc::new(pairing));
    }
    set.replace(next);
    Ok(report)
}
