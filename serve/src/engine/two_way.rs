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
//! - every [`EXPLORE_EVERY`]-th choice takes the other way, so a change (a draft moved to its own
//!   host, a busier link) is noticed.
//!
//! Rates are decayed sums of tokens over decayed sums of seconds, so each way's figure follows
//! its recent records. Pure logic: the callers pass measurements in, the tests replay them.

/// Once both ways are measured, one choice in this many goes to the way that is not preferred.
pub const EXPLORE_EVERY: u64 = 10;
/// The other way must deliver this much more to be switched to.
pub const MARGIN: f64 = 1.05;

/// One of the two ways (`0` or `1`, the callers name them).
pub type Way = usize;

/// Recent records of one way: decayed sums of tokens and seconds.
#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    tokens: f64,
    seconds: f64,
    records: u64,
}

impl Measured {
    fn tok_s(&self) -> Option<f64> {
        (self.records > 0 && self.seconds > 0.0).then(|| self.tokens / self.seconds)
    }
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
    ways: [Measured; 2],
    choices: u64,
    preferred: Option<Way>,
    warm_up: u64,
    decay: f64,
    first: Way,
}

impl TwoWay {
    /// `warm_up` records of each way before rates decide; each new record weighs a way's older
    /// ones down by `decay` (0.9: about the last ten count); `first` is tried first and wins ties
    /// while measuring.
    pub fn new(warm_up: u64, decay: f64, first: Way) -> Self {
        TwoWay {
            ways: [Measured::default(); 2],
            choices: 0,
            preferred: None,
            warm_up,
            decay,
            first: first.min(1),
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
        if self.choices % EXPLORE_EVERY == 0 {
            1 - preferred
        } else {
            preferred
        }
    }

    /// `way` delivered `tokens` in `seconds`; `Some` when that changed the preferred way.
    pub fn record(&mut self, way: Way, tokens: usize, seconds: f64) -> Option<Switch> {
        let m = &mut self.ways[way.min(1)];
        m.tokens = m.tokens * self.decay + tokens as f64;
        m.seconds = m.seconds * self.decay + seconds.max(0.0);
        m.records += 1;
        if self.ways.iter().any(|w| w.records < self.warm_up) {
            return None;
        }
        let (Some(r0), Some(r1)) = (self.ways[0].tok_s(), self.ways[1].tok_s()) else {
            return None;
        };
        let rate = [r0, r1];
        let next = match self.preferred {
            Some(p) if rate[1 - p] > rate[p] * MARGIN => 1 - p,
            Some(p) => p,
            None if rate[1 - self.first] > rate[self.first] * MARGIN => 1 - self.first,
            None => self.first,
        };
        let changed = self.preferred.is_some_and(|p| p != next);
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
        let explored = later.iter().filter(|&&w| w == 0).count();
        assert_eq!(explored, 100 / EXPLORE_EVERY as usize, "{later:?}");
        assert_eq!(c.preferred(), Some(1));
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

    #[test]
    fn a_change_is_noticed_and_reported() {
        let mut c = TwoWay::new(3, 0.7, 0);
        replay(&mut c, 20, [60.0, 30.0]);
        assert_eq!(c.preferred(), Some(0));
        let mut switched = None;
        for _ in 0..60 {
            let way = c.choose();
            let rate = [20.0, 30.0][way];
            switched = switched.or(c.record(way, 64, 64.0 / rate));
        }
        let s = switched.expect("a switch to way 1");
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
