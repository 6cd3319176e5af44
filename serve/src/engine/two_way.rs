//! Choosing between two ways of doing the same work by the tokens per second each recently
//! delivered. The speculation-path choice (`path_choice`: proxy rounds or native pairing, per
//! request) and the pipelining choice (`pipelining`: draft ahead or not, per drafter) both ask the
//! same question of different measurements, so the rule lives here once:
//!
//! - measure both: until each way has `warm_up` records, the way with fewer records serves
//!   (ties: the way that is the likelier winner, [`TwoWay::new`]'s `first`);
//! - then the way with the higher rate serves, and the other must beat it by [`MARGIN`] to take
//!   over (no flapping on noise) — at the first decision too, where the likelier winner serves
//!   unless the other beats it by the margin: one request each way is little evidence, and a
//!   wrong first pick costs requests until the next exploration;
//! - now and then a choice takes the other way, so a change (a draft moved to its own host, a
//!   busier link) is noticed: the first [`EXPLORE_EVERY`] choices after a decision, and each
//!   exploration whose first record loses to the preferred way doubles the wait for the next, up
//!   to [`EXPLORE_AT_MOST_EVERY`]; a switch, or an exploration that measured faster without yet
//!   outweighing its way's older records, starts again from [`EXPLORE_EVERY`]. A way that keeps
//!   losing costs every exploration its whole margin: on the H100's slow target, the native path
//!   ran 2.45x against 3.2x for one-pass rounds, and a fixed one-in-ten exploration served one of
//!   the run's four measured requests natively (auto 2.80x against 3.21x adaptive). The way still
//!   preferred is measured all the time, so its getting slower is noticed without exploring.
//!
//! Rates are decayed sums of tokens over decayed sums of seconds, so each way's figure follows
//! its recent records. A record may carry a class (the pipelining choice's: the round's draft
//! length k): the ways are then compared only over the classes both measured, each class weighed
//! alike for both, because a way that happened to run at larger k would otherwise look faster for
//! that alone (on the H100's shared card, with the controller varying k, pipelining measured 404
//! against 367 tok/s and was chosen where pinned rows measure it 447 against 608). Pure logic:
//! the callers pass measurements in, the tests replay them.

/// After a decision, the choice this many later goes to the way that is not preferred.
pub const EXPLORE_EVERY: u64 = 10;
/// Explorations that confirm the preference space out, doubling, up to one in this many choices.
pub const EXPLORE_AT_MOST_EVERY: u64 = 40;
/// The other way must deliver this much more to be switched to.
pub const MARGIN: f64 = 1.05;

/// One of the two ways (`0` or `1`, the callers name them).
pub type Way = usize;

/// Recent records of one way in one class: decayed sums of tokens, seconds and records.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    tokens: f64,
    seconds: f64,
    weight: f64,
}

impl Measured {
    fn decay(&mut self, by: f64) {
        self.tokens *= by;
        self.seconds *= by;
        self.weight *= by;
    }
}

/// One way's records, by class.
#[derive(Debug, Default, Clone)]
struct WayRecords {
    classes: std::collections::BTreeMap<usize, Measured>,
    records: u64,
}

impl WayRecords {
    /// Tokens per second over all its classes.
    fn tok_s(&self) -> Option<f64> {
        let (t, s) =
            (self.classes.values()).fold((0.0, 0.0), |(t, s), m| (t + m.tokens, s + m.seconds));
        (self.records > 0 && s > 0.0).then(|| t / s)
    }
}

/// Both ways' rates over the classes both measured, each class weighed alike for both (the
/// smaller of the two ways' decayed record counts): mean tokens per record over mean seconds per
/// record. `None` without a common class.
fn comparable_rates(ways: &[WayRecords; 2]) -> Option<[f64; 2]> {
    let mut sums = [(0.0, 0.0); 2];
    for (class, a) in &ways[0].classes {
        let Some(b) = ways[1].classes.get(class) else {
            continue;
        };
        let w = a.weight.min(b.weight);
        if w <= 0.0 {
            continue;
        }
        for (sum, m) in sums.iter_mut().zip([a, b]) {
            sum.0 += w * m.tokens / m.weight;
            sum.1 += w * m.seconds / m.weight;
        }
    }
    let [(t0, s0), (t1, s1)] = sums;
    (s0 > 0.0 && s1 > 0.0).then(|| [t0 / s0, t1 / s1])
}

/// The preferred way changed: from what to what, and the rates that decided it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Switch {
    pub to: Way,
    pub to_tok_s: f64,
    pub from_tok_s: f64,
}

/// Measurements of both ways and the current preference.
#[derive(Debug, Clone)]
pub struct TwoWay {
    ways: [WayRecords; 2],
    choices: u64,
    preferred: Option<Way>,
    warm_up: u64,
    decay: f64,
    first: Way,
    /// The choice of the last decision or exploration, and the choices from it to the next
    /// exploration.
    explored_at: u64,
    explore_gap: u64,
    /// An exploration was chosen and its way's record has not yet spaced the next one out.
    exploring: bool,
}

impl TwoWay {
    /// `warm_up` records of each way before rates decide; each new record weighs a way's older
    /// ones down by `decay` (0.9: about the last ten count); `first` is tried first and wins ties
    /// while measuring.
    pub fn new(warm_up: u64, decay: f64, first: Way) -> Self {
        TwoWay {
            ways: Default::default(),
            choices: 0,
            preferred: None,
            warm_up,
            decay,
            first: first.min(1),
            explored_at: 0,
            explore_gap: EXPLORE_EVERY,
            exploring: false,
        }
    }

    /// The way for the next piece of work.
    pub fn choose(&mut self) -> Way {
        self.choices += 1;
        let (a, b) = (
            self.ways[self.first].records,
            self.ways[1 - self.first].records,
        );
        if a < self.warm_up || b < self.warm_up {
            return if a <= b { self.first } else { 1 - self.first };
        }
        let preferred = self.preferred.unwrap_or(self.first);
        if self.choices >= self.explored_at + self.explore_gap {
            self.explored_at = self.choices;
            self.exploring = true;
            1 - preferred
        } else {
            preferred
        }
    }

    /// `way` delivered `tokens` in `seconds`; `Some` when that changed the preferred way.
    pub fn record(&mut self, way: Way, tokens: usize, seconds: f64) -> Option<Switch> {
        self.record_in(way, 0, tokens, seconds)
    }

    /// [`TwoWay::record`] of a record in `class`: the ways are compared over the classes both
    /// measured (see the module documentation).
    pub fn record_in(
        &mut self,
        way: Way,
        class: usize,
        tokens: usize,
        seconds: f64,
    ) -> Option<Switch> {
        let w = &mut self.ways[way.min(1)];
        w.classes.values_mut().for_each(|m| m.decay(self.decay));
        let m = w.classes.entry(class).or_default();
        m.tokens += tokens as f64;
        m.seconds += seconds.max(0.0);
        m.weight += 1.0;
        w.records += 1;
        if self.ways.iter().any(|w| w.records < self.warm_up) {
            return None;
        }
        let rate = comparable_rates(&self.ways)?;
        let next = match self.preferred {
            Some(p) if rate[1 - p] > rate[p] * MARGIN => 1 - p,
            Some(p) => p,
            None if rate[1 - self.first] > rate[self.first] * MARGIN => 1 - self.first,
            None => self.first,
        };
        let changed = self.preferred.is_some_and(|p| p != next);
        if self.preferred.is_none() || changed {
            // A (new) decision: explore soon, it may be wrong.
            self.explored_at = self.choices;
            self.explore_gap = EXPLORE_EVERY;
            self.exploring = false;
        } else if self.exploring && way != next {
            // The other way was explored and did not take over. If this record beat the
            // preferred way it may be improving (its older records still weigh it down): look
            // again soon. Otherwise it lost again: explore it less often.
            let theirs = (self.ways[next].classes.get(&class))
                .filter(|m| m.seconds > 0.0)
                .map(|m| m.tokens / m.seconds)
                .or_else(|| self.ways[next].tok_s());
            let promising = seconds > 0.0 && theirs.is_some_and(|r| tokens as f64 / seconds > r);
            self.explore_gap = if promising {
                EXPLORE_EVERY
            } else {
                (self.explore_gap * 2).min(EXPLORE_AT_MOST_EVERY)
            };
            self.exploring = false;
        }
        self.preferred = Some(next);
        changed.then(|| Switch {
            to: next,
            to_tok_s: rate[next],
            from_tok_s: rate[1 - next],
        })
    }

    /// The way choices take outside exploration (`None` while both are still being measured).
    pub fn preferred(&self) -> Option<Way> {
        self.preferred
    }

    /// Whether taking `way` now is a trial: a way other than the preferred one (before the first
    /// decision: other than the likelier winner), taken to measure it.
    pub fn is_trial(&self, way: Way) -> bool {
        way != self.preferred.unwrap_or(self.first)
    }

    /// A way's recent tokens per second (`None` before its first record).
    pub fn tok_s(&self, way: Way) -> Option<f64> {
        self.ways[way.min(1)].tok_s()
    }

    /// How many records a way has.
    pub fn records(&self, way: Way) -> u64 {
        self.ways[way.min(1)].records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Make `n` choices, each way delivering its given tok/s; the ways chosen.
    fn replay(c: &mut TwoWay, n: usize, rates: [f64; 2]) -> Vec<Way> {
        (0..n)
            .map(|_| {
                let way = c.choose();
                c.record(way, 64, 64.0 / rates[way]);
                way
            })
            .collect()
    }

    /// [`replay`] for up to `n` choices, stopping at the first that changes the preferred way:
    /// its index and the switch.
    fn replay_until_switch(c: &mut TwoWay, n: usize, rates: [f64; 2]) -> Option<(usize, Switch)> {
        (0..n).find_map(|i| {
            let way = c.choose();
            c.record(way, 64, 64.0 / rates[way]).map(|s| (i, s))
        })
    }

    #[test]
    fn both_ways_are_measured_first_the_likelier_winner_first() {
        let mut c = TwoWay::new(3, 0.7, 1);
        assert_eq!(replay(&mut c, 6, [10.0, 10.0]), [1, 0, 1, 0, 1, 0]);
    }

    #[test]
    fn the_faster_way_serves_and_the_other_is_explored() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 6, [30.0, 60.0]);
        let later = replay(&mut c, 100, [30.0, 60.0]);
        let explored: Vec<usize> = (later.iter().enumerate())
            .filter(|(_, &w)| w == 0)
            .map(|(i, _)| i + 7)
            .collect();
        // Decided at choice 6; then explored 10, 20 and 40 choices apart.
        assert_eq!(explored, [16, 36, 76], "{later:?}");
        assert_eq!(c.preferred(), Some(1));
        // Spaced out no further than the bound.
        let more = replay(&mut c, 400, [30.0, 60.0]);
        let explored = more.iter().filter(|&&w| w == 0).count();
        assert_eq!(explored, 400 / EXPLORE_AT_MOST_EVERY as usize, "{more:?}");
    }

    #[test]
    fn a_switch_makes_exploration_frequent_again() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 200, [60.0, 30.0]);
        assert_eq!(c.preferred(), Some(0));
        // Way 0 slows down below way 1: noticed from its own records, no exploration needed.
        assert!(
            replay_until_switch(&mut c, 20, [20.0, 30.0]).is_some(),
            "no switch"
        );
        let after = replay(&mut c, EXPLORE_EVERY as usize, [20.0, 30.0]);
        assert_eq!(
            after.iter().filter(|&&w| w == 0).count(),
            1,
            "the way just left is explored within EXPLORE_EVERY choices: {after:?}"
        );
    }

    #[test]
    fn an_exploration_that_measures_faster_brings_the_next_one_closer() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 200, [60.0, 30.0]);
        // Way 1 now runs at 70: its first exploration is faster than way 0 but its older records
        // keep its rate below; the next exploration comes EXPLORE_EVERY choices later, not 40.
        let ways = replay(&mut c, 200, [60.0, 70.0]);
        let first = ways.iter().position(|&w| w == 1).expect("explored");
        assert!(first < EXPLORE_AT_MOST_EVERY as usize, "{ways:?}");
        let second = first
            + 1
            + ways[first + 1..]
                .iter()
                .position(|&w| w == 1)
                .unwrap_or(999);
        assert_eq!(second - first, EXPLORE_EVERY as usize, "{ways:?}");
        assert_eq!(c.preferred(), Some(1), "taken over in the end");
    }

    #[test]
    fn one_exploration_spans_many_records_and_spaces_the_next_out_once() {
        // The pipelining choice: a request (one choice) records each of its rounds.
        let mut c = TwoWay::new(3, 0.9, 0);
        let mut served = Vec::new();
        for _ in 0..120 {
            let way = c.choose();
            for _ in 0..8 {
                c.record(way, 5, 5.0 / [100.0, 60.0][way]);
            }
            served.push(way);
        }
        let explored: Vec<usize> = (served.iter().enumerate())
            .filter(|(i, &w)| *i >= 2 && w == 1)
            .map(|(i, _)| i + 1)
            .collect();
        // Both ways measured by choice 2 (eight rounds each); then 10, 20, 40, 40 choices apart.
        assert_eq!(explored, [12, 32, 72, 112], "{served:?}");
    }

    #[test]
    fn at_the_first_decision_the_likelier_winner_keeps_it_within_the_margin() {
        // Way 1 is the likelier winner; way 0 measures 3% faster: noise, not a reason.
        let mut c = TwoWay::new(3, 0.7, 1);
        replay(&mut c, 6, [103.0, 100.0]);
        assert_eq!(c.preferred(), Some(1));
        // Beyond the margin it takes over.
        let mut c = TwoWay::new(3, 0.7, 1);
        replay(&mut c, 6, [110.0, 100.0]);
        assert_eq!(c.preferred(), Some(0));
    }

    /// A round's seconds at draft length k: 5 ms + 1 ms a draft token, `slower` times that.
    fn round(k: usize, slower: f64) -> f64 {
        slower * (0.005 + 0.001 * k as f64)
    }

    #[test]
    fn ways_measured_at_different_classes_are_compared_class_by_class() {
        // Way 0 costs 1.2x way 1 at every k, but ran mostly at k = 8 and way 1 mostly at k = 2:
        // all its records together, way 0 looks faster (9 tokens a round against 3).
        let feed = |c: &mut TwoWay, classes: bool| {
            for (way, k, n) in [(1, 2, 10), (1, 8, 2), (0, 8, 10), (0, 2, 2)] {
                let slower = if way == 0 { 1.2 } else { 1.0 };
                for _ in 0..n {
                    let class = if classes { k } else { 0 };
                    c.record_in(way, class, k + 1, round(k, slower));
                }
            }
        };
        let mut pooled = TwoWay::new(3, 0.9, 1);
        feed(&mut pooled, false);
        assert_eq!(
            pooled.preferred(),
            Some(0),
            "the confound this guards against"
        );
        let mut by_class = TwoWay::new(3, 0.9, 1);
        feed(&mut by_class, true);
        assert_eq!(by_class.preferred(), Some(1));
    }

    #[test]
    fn without_a_common_class_nothing_is_decided() {
        let mut c = TwoWay::new(2, 0.9, 1);
        for _ in 0..5 {
            c.record_in(0, 8, 9, round(8, 0.5));
            c.record_in(1, 2, 3, round(2, 1.0));
        }
        assert_eq!(c.preferred(), None);
        // One common class, and the faster way there wins.
        for _ in 0..3 {
            c.record_in(1, 8, 9, round(8, 1.0));
        }
        assert_eq!(c.preferred(), Some(0));
    }

    #[test]
    fn a_change_is_noticed_and_reported() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 20, [60.0, 30.0]);
        assert_eq!(c.preferred(), Some(0));
        let (at, s) = replay_until_switch(&mut c, 60, [20.0, 30.0]).expect("a switch to way 1");
        // The rest of the 60 choices: the switch holds.
        replay(&mut c, 60 - at - 1, [20.0, 30.0]);
        assert_eq!(s.to, 1);
        assert!(s.to_tok_s > s.from_tok_s * MARGIN, "{s:?}");
        assert_eq!(c.preferred(), Some(1));
    }

    #[test]
    fn noise_inside_the_margin_does_not_flip_the_preference() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 10, [40.0, 40.0]);
        let before = c.preferred();
        for i in 0..200 {
            let noise = if i % 2 == 0 { 1.03 } else { 0.97 };
            replay(&mut c, 1, [40.0 * noise, 40.0 / noise]);
            assert_eq!(c.preferred(), before);
        }
    }
}
