//! Whether a drafter drafts the next block while the target verifies this one (pipelining).
//!
//! Pipelining bets on full acceptance: the draft works on the block after this one while the
//! target verifies, so a won bet hides the draft's time. That pays when draft and target run on
//! different devices. When they share one — a single GPU holding both servers (measured on an
//! H100: the draft's token went from 0.8 to 1.9 ms and the target's 5-token verification slowed
//! too), or the cores of one small host — the prefetch competes with the very verification it
//! overlaps, and every lost bet (about half the rounds at k = 4) is work thrown away on the shared
//! device. Nothing in a URL says which case a pairing is, so `pipeline = "auto"` (the default)
//! measures: each drafter serves requests both ways until each way has [`MIN_ROUNDS`] rounds, then
//! every request takes the way whose recent rounds ran faster (switching only for a margin), and
//! now and then a request takes the other way so a change (the draft moved to its own host, a busy
//! host freed) is noticed: [`REVISIT_EVERY`] requests after a decision, spacing out while the
//! other way keeps losing — the rule of `two_way`.
//!
//! "Faster" is the tokens a round offered the target (k + 1) per second of the round, not the
//! tokens it delivered: which draft tokens the target accepts does not depend on the way, and the
//! accepted count swings from 1 to k + 1 from round to round, which made the rates of ten-round
//! windows swing by ±7% on the H100 — more than the margin, so the choice flapped and a shared
//! card ran 70 of 203 rounds pipelined at 230 tok/s against 322 sequential.

use serde::{Deserialize, Serialize};

use super::two_way::{TwoWay, Way};

/// Rounds of each way before the measured rates decide.
pub const MIN_ROUNDS: u64 = 12;
/// This many requests after a decision the way not chosen serves one (keeps its rate fresh;
/// later revisits space out, see `two_way`).
pub const REVISIT_EVERY: u64 = super::two_way::EXPLORE_EVERY;
/// Each new round weighs the older ones of its way down by this factor (about the last 10
/// rounds count: one revisiting request mostly replaces what its way measured before), so the
/// rates follow a pairing whose hosts change.
const DECAY: f64 = 0.9;

/// The `pipeline` setting of a pairing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pipelining {
    /// Measure both ways and take the faster (see the module documentation).
    #[default]
    Auto,
    /// Always draft ahead (draft and target on different devices, `-np 2` on the draft).
    On,
    /// Never draft ahead.
    Off,
}

impl<'de> Deserialize<'de> for Pipelining {
    /// `"auto" | "on" | "off"`, and the booleans of the earlier `pipeline = true|false`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelling {
            Switch(bool),
            Word(String),
        }
        match Spelling::deserialize(d)? {
            Spelling::Switch(true) => Ok(Pipelining::On),
            Spelling::Switch(false) => Ok(Pipelining::Off),
            Spelling::Word(w) => match w.as_str() {
                "auto" => Ok(Pipelining::Auto),
                "on" | "true" => Ok(Pipelining::On),
                "off" | "false" => Ok(Pipelining::Off),
                other => Err(serde::de::Error::custom(format!(
                    "unknown pipeline setting `{other}`: expected \"auto\", \"on\" or \"off\""
                ))),
            },
        }
    }
}

impl schemars::JsonSchema for Pipelining {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pipelining".into()
    }

    /// The words, and the booleans that files written for earlier versions hold.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Draft the next block while the target verifies: \"auto\" (where it measures faster), \"on\" or \"off\".",
            "oneOf": [
                { "type": "string", "enum": ["auto", "on", "off"] },
                { "type": "boolean", "description": "The earlier spelling: true = \"on\", false = \"off\"." }
            ]
        })
    }
}

/// One drafter's measurements of both ways (way 0: pipelined, way 1: sequential).
#[derive(Debug)]
pub struct PipelineChooser(TwoWay);

impl Default for PipelineChooser {
    fn default() -> Self {
        // Sequential first: a pairing's first rounds also teach its controller what speculation
        // delivers, and on a shared device the pipelined way delivers far less (H100, k=8: 260
        // against 342 tok/s, `benchmarks/results/gpu/distributed/fast-after-pieces.md`), which
        // made the controller switch speculation off before the chooser had found the better
        // way. Where the draft has its own device, pipelining takes over after its rounds.
        PipelineChooser(TwoWay::new(MIN_ROUNDS, DECAY, SEQUENTIAL))
    }
}

const PIPELINED: Way = 0;
const SEQUENTIAL: Way = 1;

/// A drafter's pipelining state for the stats JSON.
#[derive(Debug, Clone, Serialize)]
pub struct PipeliningView {
    pub setting: Pipelining,
    /// The way requests take now (`None`: still measuring both).
    pub pipelined: Option<bool>,
    /// Tokens offered to the target (k + 1 a round) per second of the ways' recent rounds.
    pub pipelined_offered_tok_s: Option<f64>,
    pub sequential_offered_tok_s: Option<f64>,
    pub pipelined_rounds: u64,
    pub sequential_rounds: u64,
}

impl PipelineChooser {
    /// Whether the next request drafts ahead, and whether that is a trial of the way not
    /// preferred (measuring both ways, or a revisit): such a request tells how the way performs,
    /// not how speculation served (see `round`).
    pub fn choose(&mut self) -> (bool, bool) {
        let way = self.0.choose();
        (way == PIPELINED, self.0.is_trial(way))
    }

    /// Whether requests draft ahead outside trials: the preferred way, sequential while both are
    /// still measured. For a request that measures speculation itself (a controller's probe),
    /// which a trial of the slower way would mis-measure.
    pub fn settled(&self) -> bool {
        self.0.preferred().unwrap_or(SEQUENTIAL) == PIPELINED
    }

    /// One round of a request that took the given way: the draft tokens it verified, seconds it
    /// took (drafting, waiting for a prefetch, verifying).
    pub fn record(&mut self, pipelined: bool, drafted: usize, seconds: f64) {
        let way = if pipelined { PIPELINED } else { SEQUENTIAL };
        // Classed by k: the ways are compared at the same draft lengths (see `two_way`).
        if let Some(switch) = self.0.record_in(way, drafted, drafted + 1, seconds) {
            tracing::info!(
                pipelined = switch.to == PIPELINED,
                offered_tok_s = switch.to_tok_s,
                other_offered_tok_s = switch.from_tok_s,
                "pipelining"
            );
        }
    }

    pub fn view(&self, setting: Pipelining) -> PipeliningView {
        PipeliningView {
            setting,
            pipelined: match setting {
                Pipelining::On => Some(true),
                Pipelining::Off => Some(false),
                Pipelining::Auto => self.0.preferred().map(|w| w == PIPELINED),
            },
            pipelined_offered_tok_s: self.0.tok_s(PIPELINED),
            sequential_offered_tok_s: self.0.tok_s(SEQUENTIAL),
            pipelined_rounds: self.0.records(PIPELINED),
            sequential_rounds: self.0.records(SEQUENTIAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::two_way::EXPLORE_AT_MOST_EVERY;
    use super::*;

    /// Serve `requests` requests of 8 rounds each; a round verifies 4 draft tokens in the seconds
    /// the way costs on this "host".
    fn serve(
        c: &mut PipelineChooser,
        requests: usize,
        pipelined_s: f64,
        sequential_s: f64,
    ) -> Vec<bool> {
        (0..requests)
            .map(|_| {
                let (way, _) = c.choose();
                for _ in 0..8 {
                    c.record(way, 4, if way { pipelined_s } else { sequential_s });
                }
                way
            })
            .collect()
    }

    #[test]
    fn measures_both_ways_then_takes_the_faster_and_revisits_the_other() {
        // A shared device: pipelined rounds cost more.
        let mut c = PipelineChooser::default();
        let ways = serve(&mut c, 40, 0.014, 0.010);
        let measured = (MIN_ROUNDS as usize).div_ceil(8) * 2;
        assert!(ways[..measured].contains(&true) && ways[..measured].contains(&false));
        let after: Vec<bool> = ways[measured..].to_vec();
        let pipelined = after.iter().filter(|&&w| w).count();
        assert!(pipelined >= 1, "the other way is revisited: {ways:?}");
        assert!(
            pipelined <= after.len() / REVISIT_EVERY as usize + 1,
            "{ways:?}"
        );
        assert_eq!(c.view(Pipelining::Auto).pipelined, Some(false));

        // The draft moves to its own device: pipelining now pays, and the revisits notice: the
        // next one (revisits have spaced out to one in EXPLORE_AT_MOST_EVERY requests by now)
        // measures it faster, the one after comes EXPLORE_EVERY requests later.
        let mut ways = Vec::new();
        let mut switched = None;
        for i in 0..120 {
            ways.extend(serve(&mut c, 1, 0.007, 0.010));
            if switched.is_none() && c.view(Pipelining::Auto).pipelined == Some(true) {
                switched = Some(i);
            }
        }
        let switched = switched.expect("pipelining is taken over");
        assert!(
            switched < (EXPLORE_AT_MOST_EVERY + REVISIT_EVERY) as usize,
            "{ways:?}"
        );
        let after = &ways[switched + 1..];
        let sequential = after.iter().filter(|&&w| !w).count();
        assert!(
            sequential <= after.len() / REVISIT_EVERY as usize + 1,
            "only the revisits stay sequential: {ways:?}"
        );
        assert_eq!(c.view(Pipelining::Auto).pipelined, Some(true));
    }

    #[test]
    fn a_new_drafter_starts_sequential() {
        // Its first rounds also feed the controller: they must not be the way that can lose big.
        let mut c = PipelineChooser::default();
        assert_eq!(c.choose(), (false, false));
        assert_eq!(c.view(Pipelining::Auto).pipelined, None);
    }

    #[test]
    fn the_settled_way_is_sequential_while_measuring_then_the_faster_never_a_revisit() {
        let mut c = PipelineChooser::default();
        assert!(!c.settled(), "sequential while both ways are measured");
        // The draft on its own device: pipelining measures faster and is preferred.
        serve(&mut c, 6, 0.007, 0.010);
        assert_eq!(c.view(Pipelining::Auto).pipelined, Some(true));
        // Whatever `choose` would do next (a revisit of the sequential way comes every few
        // requests), the settled way stays the preferred one.
        for _ in 0..2 * REVISIT_EVERY {
            assert!(c.settled());
            let (way, _) = c.choose();
            c.record(way, 4, if way { 0.007 } else { 0.010 });
        }
    }

    #[test]
    fn a_difference_inside_the_margin_does_not_flip_the_choice() {
        let mut c = PipelineChooser::default();
        serve(&mut c, 20, 0.0100, 0.0102);
        let before = c.view(Pipelining::Auto).pipelined;
        let ways = serve(&mut c, 30, 0.0102, 0.0100);
        let flips = ways.windows(2).filter(|w| w[0] != w[1]).count();
        // Only the revisits leave the preferred way (out and back: two flips each).
        assert!(flips <= 2 * (30 / REVISIT_EVERY as usize + 1), "{ways:?}");
        assert_eq!(c.view(Pipelining::Auto).pipelined, before);
    }

    #[test]
    fn the_setting_accepts_words_and_the_old_booleans() {
        #[derive(Deserialize)]
        struct S {
            pipeline: Pipelining,
        }
        let parse = |v: &str| toml::from_str::<S>(&format!("pipeline = {v}")).map(|s| s.pipeline);
        assert_eq!(parse("true").ok(), Some(Pipelining::On));
        assert_eq!(parse("false").ok(), Some(Pipelining::Off));
        assert_eq!(parse("\"auto\"").ok(), Some(Pipelining::Auto));
        assert_eq!(parse("\"off\"").ok(), Some(Pipelining::Off));
        let err = parse("\"sometimes\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("expected \"auto\", \"on\" or \"off\""),
            "{err}"
        );
    }
}
