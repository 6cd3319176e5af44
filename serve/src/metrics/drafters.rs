//! Per-drafter counters, for pairings with several draft servers (`engine::drafters`): which one
//! was chosen, and how its rounds went.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{lease, PairingMetrics};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DrafterLabel {
    pub(super) pairing: String,
    pub(super) drafter: String,
}

/// Per-drafter counters of pairings with several draft servers (`engine::drafters`).
#[derive(Clone)]
pub(super) struct DrafterFamilies {
    pub(super) wins: Family<DrafterLabel, Counter>,
    pub(super) rounds: Family<DrafterLabel, Counter>,
    pub(super) drafted: Family<DrafterLabel, Counter>,
    pub(super) accepted: Family<DrafterLabel, Counter>,
    pub(super) failures: Family<DrafterLabel, Counter>,
}

impl DrafterFamilies {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let f = DrafterFamilies {
            wins: Family::default(),
            rounds: Family::default(),
            drafted: Family::default(),
            accepted: Family::default(),
            failures: Family::default(),
        };
        registry.register(
            "drafter_wins",
            "Requests for which this drafter was chosen (or took over from a failed one)",
            f.wins.clone(),
        );
        registry.register(
            "drafter_rounds",
            "Draft→verify rounds drafted by this drafter",
            f.rounds.clone(),
        );
        registry.register(
            "drafter_drafted_tokens",
            "Tokens proposed by this drafter",
            f.drafted.clone(),
        );
        registry.register(
            "drafter_accepted_tokens",
            "Tokens of this drafter the target accepted",
            f.accepted.clone(),
        );
        registry.register(
            "drafter_failures",
            "Errors of this drafter (the answer went on with another drafter or the target)",
            f.failures.clone(),
        );
        f
    }
}

/// One drafter's counters (cheap clones of shared atomics).
#[derive(Clone)]
pub struct DrafterMetrics {
    pub wins: Counter,
    pub rounds: Counter,
    pub drafted: Counter,
    pub accepted: Counter,
    pub failures: Counter,
    /// Keeps the pairing's series (this drafter's among them) in `/metrics` while it lives.
    _lease: Arc<lease::Lease>,
}

impl DrafterMetrics {
    pub fn round(&self, drafted: usize, accepted: usize) {
        self.rounds.inc();
        self.drafted.inc_by(drafted as u64);
        self.accepted.inc_by(accepted as u64);
    }
}

impl PairingMetrics {
    /// The handle one drafter of this pairing records into (`drafter` is its URL).
    pub fn drafter(&self, drafter: &str) -> DrafterMetrics {
        let l = DrafterLabel {
            pairing: self.name.clone(),
            drafter: drafter.to_string(),
        };
        self.lease.note_drafter(drafter);
        let f = &self.drafters;
        DrafterMetrics {
            wins: f.wins.get_or_create(&l).clone(),
            rounds: f.rounds.get_or_create(&l).clone(),
            drafted: f.drafted.get_or_create(&l).clone(),
            accepted: f.accepted.get_or_create(&l).clone(),
            failures: f.failures.get_or_create(&l).clone(),
            _lease: self.lease.clone(),
        }
    }
}
