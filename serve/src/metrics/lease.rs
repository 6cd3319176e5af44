//! When a pairing's series leave `/metrics`: when nothing records under its name any more.
//!
//! A reload that removes a pairing takes it out of the set served at once, but its requests in
//! flight finish on it and count as they finish. Taking its series out at the reload would lose
//! those counts, and worse, a request ending afterwards would bring some of them back
//! (`get_or_create`), half a pairing in `/metrics` for good. So every handle of a pairing holds a
//! [`Lease`] on its name; when the last lease of a name goes (the removed pairing's last request
//! has finished), its series are removed, and Prometheus marks them stale as it does for any
//! series that vanishes. A pairing whose settings a reload changed keeps its name: the new
//! pairing takes a lease before the old one lets go, so its counters carry on.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{DrafterLabel, ForwardLabel, PairingLabel, RequestLabel, ServedBy, Shared};

/// Under one name: how many leases there are, and the label values its series were created with
/// beyond the name (the forward reasons and drafter URLs seen), to remove each one.
#[derive(Default)]
pub(super) struct Held {
    leases: usize,
    reasons: BTreeSet<&'static str>,
    drafters: BTreeSet<String>,
}

/// One pairing handle's claim on its name's series.
pub(super) struct Lease {
    name: String,
    shared: Arc<Shared>,
}

impl Lease {
    /// A lease on `name`, taken under the same lock that removes a name's series, so a pairing
    /// added with the name of one going away never loses its series to that removal.
    pub(super) fn take(shared: &Arc<Shared>, name: &str) -> Arc<Lease> {
        let mut held = lock(&shared.held);
        held.entry(name.to_string()).or_default().leases += 1;
        Arc::new(Lease {
            name: name.to_string(),
            shared: shared.clone(),
        })
    }

    /// A forwarded request's reason got a series under this name.
    pub(super) fn note_reason(&self, reason: &'static str) {
        if let Some(h) = lock(&self.shared.held).get_mut(&self.name) {
            h.reasons.insert(reason);
        }
    }

    /// A drafter's series were made under this name.
    pub(super) fn note_drafter(&self, url: &str) {
        if let Some(h) = lock(&self.shared.held).get_mut(&self.name) {
            h.drafters.insert(url.to_string());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = lock(&self.shared.held);
        let Some(h) = held.get_mut(&self.name) else {
            return;
        };
        h.leases = h.leases.saturating_sub(1);
        if h.leases > 0 {
            return;
        }
        if let Some(h) = held.remove(&self.name) {
            remove_series(&self.shared, &self.name, &h);
        }
    }
}

/// Take every series of pairing `name` out of the families, and its smoothed speeds.
fn remove_series(shared: &Shared, name: &str, held: &Held) {
    let f = &shared.families;
    let p = PairingLabel {
        pairing: name.to_string(),
    };
    for counters in [
        &f.rounds,
        &f.drafted,
        &f.accepted,
        &f.target_calls,
        &f.generated,
        &f.draft_failures,
        &f.prefetched,
        &f.detail_rounds,
    ] {
        counters.remove(&p);
    }
    f.speculation_enabled.remove(&p);
    f.round_seconds.remove(&p);
    for served_by in ServedBy::ALL {
        let r = RequestLabel {
            pairing: name.to_string(),
            served_by,
        };
        f.requests.remove(&r);
        f.first_token.remove(&r);
        f.duration.remove(&r);
    }
    for &reason in &held.reasons {
        f.forwarded.remove(&ForwardLabel {
            pairing: name.to_string(),
            reason,
        });
    }
    let d = &f.drafters;
    for url in &held.drafters {
        let l = DrafterLabel {
            pairing: name.to_string(),
            drafter: url.clone(),
        };
        for counters in [&d.wins, &d.rounds, &d.drafted, &d.accepted, &d.failures] {
            counters.remove(&l);
        }
    }
    lock(&shared.rates).remove(name);
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;
    use super::ServedBy;

    /// Each line of `/metrics` that names `pairing="NAME"`.
    fn lines_of(m: &Metrics, name: &str) -> Vec<String> {
        let needle = format!("pairing=\"{name}\"");
        m.encode()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_name_series_go_with_its_last_handle_and_a_successor_keeps_them() {
        let m = Metrics::new();
        let old = m.pairing("gone");
        let drafter = old.drafter("http://d:1");
        old.request(ServedBy::Speculative);
        old.forwarded("field");
        drafter.round(4, 2);
        old.latencies(
            ServedBy::Speculative,
            None,
            std::time::Duration::from_millis(5),
        );
        assert!(!lines_of(&m, "gone").is_empty());

        // A request in flight still holds a clone: nothing goes yet.
        let in_flight = old.clone();
        drop(old);
        drop(drafter);
        in_flight.request(ServedBy::TargetOnly);
        assert!(m
            .encode()
            .contains("tightwad_requests_total{pairing=\"gone\",served_by=\"target_only\"} 1"));
        drop(in_flight);
        assert_eq!(lines_of(&m, "gone"), Vec::<String>::new());

        // Changed settings: the new handle is taken before the old one goes; the counts stay.
        let before = m.pairing("kept");
        before.round(4, 4);
        let after = m.pairing("kept");
        drop(before);
        after.round(4, 1);
        assert!(
            m.encode()
                .contains("tightwad_spec_rounds_total{pairing=\"kept\"} 2"),
            "{}",
            m.encode()
        );
    }
}
