//! How many tokens a pairing may draft per round (its controllers' cap, the k of a pinned
//! controller): the config's `draft_tokens` when it says, else what the target's way of verifying
//! pays for. The proxy's probe and `tightwad doctor` both ask here, so they agree; the probe
//! then gives every controller its cap (`Pairing::set_controller_caps`).
//!
//! Why the default follows the path: a target that verifies a draft in ONE sequence (the bundled
//! llama.cpp patch) pays nearly the same for 8 draft tokens as for 4 on a GPU, so a cap of 4 left
//! speed unclaimed — on the H100 benchmark's fast target, k ≤ 4 predicted 0.76x and served the
//! target alone, where k ≤ 8 measured 1.09–1.12x. A target that verifies one prompt per position
//! pays `(k+1)(a+1) + k(k+1)/2` tokens a round and one slot per position: 4 stays its default.
//! The adaptive controller still picks k per round below the cap, from measured costs.

use super::controller::K_MAX;
use super::pairing::{lock_controller, Drafter, Pairing};
use super::probe::PairingInfo;

/// The cap without `draft_tokens` where the target verifies one prompt per position (a stock
/// llama-server, vLLM) or speculates by itself (native pairing, steered by `speculative.n_max`).
pub const MULTI_PROMPT_DEFAULT: usize = 4;

/// The cap without `draft_tokens` where the target verifies a draft in one sequence: the most
/// the controller drafts; the target's own limit (`draft_tokens_max` in `/props`) applies after.
pub const ONE_PASS_DEFAULT: usize = K_MAX;

/// A draft server's draft ends after a token its model gave less than this probability (config
/// `draft_p_min`; the patched llama-server's `stop_p_min`); 0: drafts run to k. The idea: the
/// tokens after one the draft model doubts are accepted only if it was right, so drafting them
/// costs a draft step each (0.82 ms on the H100 benchmark's fast target, against the target's
/// 3.27 ms a token) for little chance of use; the doubted token itself is still proposed.
///
/// Off by default because it measured as a loss where it was tried: on the H100 fast target
/// (`benchmarks/results/gpu/distributed/draft-confidence-stop.md`) k = 8 pinned gave 1.04–1.05x
/// with no floor, 0.98x at 0.3 and 0.74x at 0.6 — the stop cut 5.8 or 2.2 tokens a round from
/// 7.7 and acceptance rose (0.56 → 0.65 → 0.83), but a round's fixed cost (two HTTP requests,
/// the relay, the verification's base) then paid for fewer tokens. On the CPU suite's slow
/// target it changed nothing beyond noise. llama.cpp's own `--draft-p-min` defaults to 0 too. A
/// user whose draft model's confidence tracks the target better can set it.
pub const DEFAULT_DRAFT_P_MIN: f64 = 0.0;

/// The draft length a pairing asks for before the target's own limits (its one-pass maximum, its
/// slots) apply: `configured` when set, else the path's default.
pub fn wanted(configured: Option<usize>, one_pass: bool) -> usize {
    configured.unwrap_or(if one_pass {
        ONE_PASS_DEFAULT
    } else {
        MULTI_PROMPT_DEFAULT
    })
}

/// The cap of a natively paired target's own speculation (`speculative.n_max` per request): its
/// `--spec-draft-n-max` holds below that.
pub fn native(configured: Option<usize>) -> usize {
    configured.unwrap_or(MULTI_PROMPT_DEFAULT)
}

/// Where a one-pass target takes drafts of at most `max` tokens: the length rounds use, and
/// whether that cuts short what the config asked for (worth a warning: the target's
/// `--spec-draft-n-max` is below `draft_tokens`). An unset `draft_tokens` is cut silently: it
/// asked for "what the target takes".
pub fn one_pass(configured: Option<usize>, max: usize) -> (usize, bool) {
    let wanted = wanted(configured, true);
    (wanted.min(max).max(1), configured.is_some_and(|k| k > max))
}

/// The draft length for a target whose `/props` says it verifies client drafts of at most
/// `one_pass_max` tokens in one sequence ([`Capabilities::one_pass_max`](crate::backend::llamacpp::Capabilities::one_pass_max);
/// `None`: a stock server), and whether that is one-pass verification. A patched target started
/// with `--spec-draft-n-max 0` takes drafts of 0 tokens, so it verifies one prompt per position
/// like a stock one. What the probe decides for `verify = "auto"`, before the target's slots.
pub fn for_target(configured: Option<usize>, one_pass_max: Option<usize>) -> (usize, bool) {
    match one_pass_max.filter(|max| *max > 0) {
        Some(max) => (one_pass(configured, max).0, true),
        None => (wanted(configured, false), false),
    }
}

impl Pairing {
    /// The most tokens a round drafts, for the stats: as configured, else the length the last
    /// probe gave the path (`None`: not probed yet, or the target takes no drafts).
    pub fn draft_tokens_view(&self) -> Option<usize> {
        self.config.draft_tokens.or_else(|| {
            let info = self.probed.try_lock().ok().and_then(|g| g.clone())?;
            match info.drafter {
                Drafter::Native => Some(native(None)),
                _ => info.draft_length.as_ref().ok().copied(),
            }
        })
    }

    /// Give every controller the draft length its path takes, now that the probe knows it: the
    /// draft servers' controllers (and prompt lookup's) the rounds' length, a native path's its
    /// own. A re-probe that finds the target rebuilt (patched, or started with another
    /// `--spec-draft-n-max`) moves the caps with it.
    pub(super) fn set_controller_caps(&self, info: &PairingInfo) {
        let native = native(self.config.draft_tokens);
        if let Ok(k) = info.draft_length {
            for d in &self.drafts {
                d.with_controller(|c| c.set_cap(k));
            }
        }
        let own = if self.config.native && self.drafts.is_empty() {
            Some(native)
        } else {
            info.draft_length.as_ref().ok().copied()
        };
        if let Some(k) = own {
            self.with_ctl(None, |c| c.set_cap(k));
        }
        if let Some(n) = &self.native_alternative {
            lock_controller(&n.controller).set_cap(native);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unset_draft_length_follows_the_verification_path() {
        assert_eq!(wanted(None, true), 8);
        assert_eq!(wanted(None, false), 4);
        assert_eq!(wanted(Some(3), true), 3);
        assert_eq!(wanted(Some(6), false), 6);
    }

    /// Doctor's reading of a target's `/props`: the path and k the probe takes on `auto`.
    #[test]
    fn a_target_taking_drafts_of_zero_tokens_is_multi_prompt() {
        assert_eq!(for_target(None, Some(16)), (8, true));
        assert_eq!(for_target(Some(6), Some(4)), (4, true));
        assert_eq!(for_target(None, Some(0)), (4, false));
        assert_eq!(for_target(Some(6), Some(0)), (6, false));
        assert_eq!(for_target(None, None), (4, false));
    }

    #[test]
    fn a_one_pass_target_caps_the_length_and_only_a_configured_one_is_worth_a_warning() {
        assert_eq!(one_pass(None, 16), (8, false));
        assert_eq!(one_pass(None, 5), (5, false));
        assert_eq!(one_pass(Some(6), 5), (5, true));
        assert_eq!(one_pass(Some(4), 5), (4, false));
        // A target that takes none is the multi-prompt path's business; never a length of 0.
        assert_eq!(one_pass(None, 0), (1, false));
    }
}
