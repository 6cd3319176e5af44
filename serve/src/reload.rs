//! Re-reading the configuration without a restart (SIGHUP, `tightwad reload`).
//!
//! The pairings live in a [`PairingSet`]: each request takes the pairing it is served by once, at
//! its start, and keeps that `Arc` to the end, so a request in flight finishes on the settings it
//! started with. A reload builds a new pairing only where its settings changed (an unchanged one
//! keeps its measurements, controller and operator overrides) and swaps the set at once.
//!
//! A reload adds the pairings whose names are new (checked and probed at once in the background,
//! as at startup: `api::reload`) and drops those whose names are gone: a request already admitted to a dropped pairing
//! holds its `Arc` and finishes on it exactly as it would have; a new request for its name finds
//! none and gets 404 `model_not_found`, like any unknown model. Its series leave `/metrics` when
//! its last such request ends ([`crate::metrics`]). The order of the file is the order served, so
//! requests that name no model follow the new first pairing. A configuration that does not load,
//! or has no pairing, changes nothing. The listener's and limits' settings need a restart (the
//! reload says which changed).

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
    #[error("the new configuration has no pairing and a proxy serves at least one; the running pairings ({0}) are kept")]
    NoPairings(String),
}

/// What a reload did, per pairing name, and what the new configuration says to the operator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// New names: served from now on (probed in the background, like at startup).
    pub added: Vec<String>,
    /// Names gone: new requests for them get 404; their requests in flight finish.
    pub removed: Vec<String>,
    /// Same name, other settings: new requests get the new ones.
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

    /// Read the configuration again and serve its pairings ([`apply`]); the lock makes
    /// concurrent reloads apply one after the other.
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

/// Build the pairings of `config` and swap them in, in the file's order (the first serves
/// requests that name no model): a pairing whose name and settings are the same is kept as it is
/// (its measurements, controller and operator overrides with it), one with new settings or a new
/// name is built afresh, and one whose name is gone is dropped from the set (its requests in
/// flight keep their `Arc` to the end). Either every pairing is built and the set swapped, or
/// nothing changes. `config` must be validated.
pub(crate) fn apply(
    set: &PairingSet,
    metrics: &Metrics,
    config: &ProxyConfig,
) -> Result<ReloadReport, ReloadError> {
    let old = set.current();
    if config.pairings.is_empty() {
        let names: Vec<&str> = old.iter().map(|p| p.config.name.as_str()).collect();
        return Err(ReloadError::NoPairings(names.join(", ")));
    }
    let mut report = ReloadReport::default();
    let mut next = Vec::with_capacity(config.pairings.len());
    for (i, entry) in config.pairings.iter().enumerate() {
        let pc = entry.to_pairing_config(i);
        let running = old.iter().find(|p| p.config.name == pc.name);
        if let Some(running) = running.filter(|p| p.config == pc) {
            report.unchanged.push(pc.name.clone());
            next.push(running.clone());
            continue;
        }
        let name = pc.name.clone();
        let pairing = Pairing::new(pc, metrics.pairing(&name))
            .map_err(|e| ReloadError::Invalid(format!("pairing {name:?}: {e}")))?;
        match running {
            Some(_) => report.changed.push(name),
            None => report.added.push(name),
        }
        next.push(Arc::new(pairing));
    }
    report.removed = old
        .iter()
        .map(|p| p.config.name.clone())
        .filter(|name| !next.iter().any(|p| &p.config.name == name))
        .collect();
    set.replace(next);
    Ok(report)
}
