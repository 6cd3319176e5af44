//! Counters for `/metrics` (Prometheus text) and `/v1/tightwad/stats` (JSON), one set per pairing.
//!
//! The Prometheus counters are the single source of truth: the JSON stats read the same values, so
//! the two views can never disagree.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;

mod drafters;
mod lease;

pub use drafters::DrafterMetrics;
use drafters::{DrafterFamilies, DrafterLabel};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairingLabel {
    pairing: String,
}

/// How a request was served: `served_by="target_only"` in `/metrics`, `"target_only"` in the
/// stats JSON and the `tightwad` field of replies — one snake_case spelling everywhere.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedBy {
    /// Draft→verify rounds (possibly finishing target-only after a draft failure).
    Speculative,
    /// Target-only generation through the engine (speculation off for this pairing or request).
    TargetOnly,
    /// The request was forwarded to the target unchanged (features the engine does not drive).
    Passthrough,
    /// The request failed.
    Error,
}

impl ServedBy {
    /// Every value, for whoever must name each series of a pairing.
    pub const ALL: [ServedBy; 4] = [
        ServedBy::Speculative,
        ServedBy::TargetOnly,
        ServedBy::Passthrough,
        ServedBy::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServedBy::Speculative => "speculative",
            ServedBy::TargetOnly => "target_only",
            ServedBy::Passthrough => "passthrough",
            ServedBy::Error => "error",
        }
    }
}

/// The label value is the JSON spelling (the derive would write the variant name, `TargetOnly`).
impl EncodeLabelValue for ServedBy {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    pairing: String,
    served_by: ServedBy,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabel {
    pairing: String,
    /// Why: a forward reason's kind (`field`, `non_text_content`, …), a bounded set.
    reason: &'static str,
}

/// Latency buckets in seconds: 5 ms to about 80 s, doubling (first tokens on a LAN are tens of
/// milliseconds, long answers on a CPU target a minute).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Round buckets in seconds: 1 ms to about 16 s, doubling.
fn round_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

/// All families, registered once.
pub struct Metrics {
    registry: Registry,
    shared: Arc<Shared>,
}

/// What [`Metrics`] and every pairing's handle share: the families, the smoothed speeds by
/// pairing, and who still records under each pairing name (see [`lease`]).
struct Shared {
    families: Families,
    rates: Mutex<std::collections::HashMap<String, Arc<Mutex<Rates>>>>,
    held: Mutex<std::collections::HashMap<String, lease::Held>>,
}

/// The families, cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
struct Families {
    first_token: Latencies<RequestLabel>,
    duration: Latencies<RequestLabel>,
    round_seconds: Latencies<PairingLabel>,
    requests: Family<RequestLabel, Counter>,
    forwarded: Family<ForwardLabel, Counter>,
    rounds: Family<PairingLabel, Counter>,
    drafted: Family<PairingLabel, Counter>,
    accepted: Family<PairingLabel, Counter>,
    target_calls: Family<PairingLabel, Counter>,
    generated: Family<PairingLabel, Counter>,
    draft_failures: Family<PairingLabel, Counter>,
    prefetched: Family<PairingLabel, Counter>,
    detail_rounds: Family<PairingLabel, Counter>,
    speculation_enabled: Family<PairingLabel, Gauge>,
    drafters: DrafterFamilies,
}

/// Smoothed speeds a person wants to see; not counters, so kept beside them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Rates {
    /// Tokens per second of the last requests served through speculation (EWMA).
    pub speculative_tok_s: Option<f64>,
    /// Tokens per second of the last target-only generations (EWMA).
    pub target_only_tok_s: Option<f64>,
    /// Why speculation is off for this pairing, if it is.
    pub speculation_off_reason: Option<String>,
}

fn ewma(old: Option<f64>, new: f64) -> Option<f64> {
    Some(match old {
        Some(o) => 0.7 * o + 0.3 * new,
        None => new,
    })
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tightwad");
        let requests = Family::<RequestLabel, Counter>::default();
        let forwarded = Family::<ForwardLabel, Counter>::default();
        let rounds = Family::<PairingLabel, Counter>::default();
        let drafted = Family::<PairingLabel, Counter>::default();
        let accepted = Family::<PairingLabel, Counter>::default();
        let target_calls = Family::<PairingLabel, Counter>::default();
        let generated = Family::<PairingLabel, Counter>::default();
        let draft_failures = Family::<PairingLabel, Counter>::default();
        let speculation_enabled = Family::<PairingLabel, Gauge>::default();
        let prefetched = Family::<PairingLabel, Counter>::default();
        let detail_rounds = Family::<PairingLabel, Counter>::default();
        registry.register(
            "requests",
            "Completion requests by how they were served",
            requests.clone(),
        );
        registry.register(
            "forwarded_requests",
            "Requests forwarded to the target unchanged, by why",
            forwarded.clone(),
        );
        registry.register("spec_rounds", "Draft→verify rounds", rounds.clone());
        registry.register(
            "spec_drafted_tokens",
            "Tokens proposed by the draft",
            drafted.clone(),
        );
        registry.register(
            "spec_accepted_tokens",
            "Draft tokens the target accepted",
            accepted.clone(),
        );
        registry.register(
            "target_verify_calls",
            "Verification requests sent to the target (one decode each)",
            target_calls.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens returned to clients",
            generated.clone(),
        );
        registry.register(
            "draft_failures",
            "Draft errors that made a stream continue target-only",
            draft_failures.clone(),
        );
        registry.register(
            "pipelined_rounds",
            "Rounds whose draft was already made while the previous block was verified",
            prefetched.clone(),
        );
        registry.register(
            "one_pass_detail_rounds",
            "One-pass verifications that asked the target for token details (n_probs): a draft token's text was not learnt yet",
            detail_rounds.clone(),
        );
        registry.register(
            "speculation_enabled",
            "1 when the pairing currently speculates, 0 when it serves target-only",
            speculation_enabled.clone(),
        );
        let first_token: Latencies<RequestLabel> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let duration: Latencies<RequestLabel> =
            Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let round_seconds: Latencies<PairingLabel> =
            Family::new_with_constructor(round_histogram as fn() -> Histogram);
        registry.register(
            "time_to_first_token_seconds",
            "From the request's arrival to its first generated text, by how it was served",
            first_token.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "From the request's arrival to its last byte, by how it was served",
            duration.clone(),
        );
        registry.register(
            "round_duration_seconds",
            "One draft→verify round, draft and verification together",
            round_seconds.clone(),
        );
        let drafters = DrafterFamilies::register(&mut registry);
        let families = Families {
            first_token,
            duration,
            round_seconds,
            requests,
            forwarded,
            rounds,
            drafted,
            accepted,
            target_calls,
            generated,
            draft_failures,
            prefetched,
            detail_rounds,
            speculation_enabled,
            drafters,
        };
        Metrics {
            registry,
            shared: Arc::new(Shared {
                families,
                rates: Mutex::new(Default::default()),
                held: Mutex::new(Default::default()),
            }),
        }
    }

    /// The handle a pairing records into. Its series stay in `/metrics` for as long as a handle
    /// of that name (or a clone) lives: a pairing a reload removed keeps them until its last
    /// request in flight has finished, then they go (see [`lease`]).
    pub fn pairing(&self, name: &str) -> PairingMetrics {
        let l = PairingLabel {
            pairing: name.to_string(),
        };
        let lease = lease::Lease::take(&self.shared, name);
        let f = &self.shared.families;
        let rates = self
            .shared
            .rates
            .lock()
            .map(|mut m| m.entry(name.to_string()).or_default().clone())
            .unwrap_or_default();
        PairingMetrics {
            first_token: f.first_token.clone(),
            duration: f.duration.clone(),
            round_seconds: f.round_seconds.get_or_create(&l).clone(),
            name: name.to_string(),
            requests: f.requests.clone(),
            forwarded: f.forwarded.clone(),
            rounds: f.rounds.get_or_create(&l).clone(),
            drafted: f.drafted.get_or_create(&l).clone(),
            accepted: f.accepted.get_or_create(&l).clone(),
            target_calls: f.target_calls.get_or_create(&l).clone(),
            generated: f.generated.get_or_create(&l).clone(),
            draft_failures: f.draft_failures.get_or_create(&l).clone(),
            prefetched: f.prefetched.get_or_create(&l).clone(),
            detail_rounds: f.detail_rounds.get_or_create(&l).clone(),
            speculation_enabled: f.speculation_enabled.get_or_create(&l).clone(),
            drafters: f.drafters.clone(),
            rates,
            lease,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One pairing's counters (cheap clones of shared atomics).
#[derive(Clone)]
pub struct PairingMetrics {
    first_token: Latencies<RequestLabel>,
    duration: Latencies<RequestLabel>,
    /// Each draft→verify round's wall time.
    pub round_seconds: Histogram,
    name: String,
    requests: Family<RequestLabel, Counter>,
    forwarded: Family<ForwardLabel, Counter>,
    pub rounds: Counter,
    pub drafted: Counter,
    pub accepted: Counter,
    pub target_calls: Counter,
    pub generated: Counter,
    pub draft_failures: Counter,
    pub prefetched: Counter,
    /// One-pass verifications that asked for token details (see `engine::pieces`).
    pub detail_rounds: Counter,
    pub speculation_enabled: Gauge,
    drafters: DrafterFamilies,
    rates: Arc<Mutex<Rates>>,
    /// Keeps this pairing's series in `/metrics` while the handle lives.
    lease: Arc<lease::Lease>,
}

/// The JSON view of one pairing, for `/v1/tightwad/stats`.
#[derive(Debug, Serialize)]
pub struct PairingStats {
    pub pairing: String,
    pub speculation_enabled: bool,
    pub requests: RequestCounts,
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
    pub acceptance: Option<f64>,
    pub tokens_per_round: Option<f64>,
    pub target_verify_calls: u64,
    pub generated_tokens: u64,
    pub draft_failures: u64,
    pub pipelined_rounds: u64,
    pub one_pass_detail_rounds: u64,
    #[serde(flatten)]
    pub rates: Rates,
}

#[derive(Debug, Serialize)]
pub struct RequestCounts {
    pub speculative: u64,
    pub target_only: u64,
    pub passthrough: u64,
    pub error: u64,
}

impl PairingMetrics {
    pub fn request(&self, served_by: ServedBy) {
        self.requests
            .get_or_create(&RequestLabel {
                pairing: self.name.clone(),
                served_by,
            })
            .inc();
    }

    /// A request the target served unchanged: counted as passthrough, and by why (a reason's
    /// kind, a bounded label set).
    pub fn forwarded(&self, reason: &'static str) {
        self.request(ServedBy::Passthrough);
        self.lease.note_reason(reason);
        self.forwarded
            .get_or_create(&ForwardLabel {
                pairing: self.name.clone(),
                reason,
            })
            .inc();
    }

    fn requests_of(&self, served_by: ServedBy) -> u64 {
        self.requests
            .get_or_create(&RequestLabel {
                pairing: self.name.clone(),
                served_by,
            })
            .get()
    }

    pub fn round(&self, drafted: usize, accepted: usize) {
        self.rounds.inc();
        self.target_calls.inc();
        self.drafted.inc_by(drafted as u64);
        self.accepted.inc_by(accepted as u64);
    }

    /// One request's latencies: to its first generated text (`None`: it had none) and to its
    /// end.
    pub fn latencies(
        &self,
        served_by: ServedBy,
        first_token: Option<std::time::Duration>,
        total: std::time::Duration,
    ) {
        let l = RequestLabel {
            pairing: self.name.clone(),
            served_by,
        };
        if let Some(t) = first_token {
            self.first_token.get_or_create(&l).observe(t.as_secs_f64());
        }
        self.duration.get_or_create(&l).observe(total.as_secs_f64());
    }

    pub fn record_rate(&self, served_by: ServedBy, tok_s: f64) {
        if !tok_s.is_finite() || tok_s <= 0.0 {
            return;
        }
        if let Ok(mut r) = self.rates.lock() {
            match served_by {
                ServedBy::Speculative => r.speculative_tok_s = ewma(r.speculative_tok_s, tok_s),
                ServedBy::TargetOnly | ServedBy::Passthrough => {
                    r.target_only_tok_s = ewma(r.target_only_tok_s, tok_s)
                }
                ServedBy::Error => {}
            }
        }
    }

    pub fn set_speculation(&self, enabled: bool, off_reason: Option<String>) {
        self.speculation_enabled.set(i64::from(enabled));
        if let Ok(mut r) = self.rates.lock() {
            r.speculation_off_reason = off_reason;
        }
    }

    pub fn snapshot(&self) -> PairingStats {
        let rounds = self.rounds.get();
        let drafted = self.drafted.get();
        let accepted = self.accepted.get();
        PairingStats {
            pairing: self.name.clone(),
            speculation_enabled: self.speculation_enabled.get() == 1,
            requests: RequestCounts {
                speculative: self.requests_of(ServedBy::Speculative),
                target_only: self.requests_of(ServedBy::TargetOnly),
                passthrough: self.requests_of(ServedBy::Passthrough),
                error: self.requests_of(ServedBy::Error),
            },
            rounds,
            drafted,
            accepted,
            acceptance: (drafted > 0).then(|| accepted as f64 / drafted as f64),
            // Each round also yields the target's own token (the correction or the bonus).
            tokens_per_round: (rounds > 0).then(|| (accepted + rounds) as f64 / rounds as f64),
            target_verify_calls: self.target_calls.get(),
            generated_tokens: self.generated.get(),
            draft_failures: self.draft_failures.get(),
            pipelined_rounds: self.prefetched.get(),
            one_pass_detail_rounds: self.detail_rounds.get(),
            rates: self.rates.lock().map(|r| r.clone()).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_prometheus_views_agree() {
        let m = Metrics::new();
        let p = m.pairing("smol");
        p.request(ServedBy::Speculative);
        p.request(ServedBy::TargetOnly);
        p.round(4, 3);
        p.round(4, 1);
        let s = p.snapshot();
        assert_eq!(s.rounds, 2);
        assert_eq!(s.drafted, 8);
        assert_eq!(s.accepted, 4);
        assert_eq!(s.acceptance, Some(0.5));
        assert_eq!(s.tokens_per_round, Some(3.0));
        let text = m.encode();
        assert!(
            text.contains("tightwad_spec_rounds_total{pairing=\"smol\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tightwad_spec_accepted_tokens_total{pairing=\"smol\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("tightwad_requests_total{pairing=\"smol\",served_by=\"speculative\"} 1"),
            "{text}"
        );
        // One spelling of a label value: the JSON's snake_case, never the Rust variant name.
        assert!(
            text.contains("tightwad_requests_total{pairing=\"smol\",served_by=\"target_only\"} 1"),
            "{text}"
        );
        assert_eq!(
            serde_json::to_value(ServedBy::TargetOnly).expect("json"),
            ServedBy::TargetOnly.as_str()
        );
    }
}
