//! How many tokens a pairing may draft per round (its controllers' cap, the k of a pinned
//! controller): the config's `draft_tokens` when it says, else what the target's way of verifying
//! pays for. The proxy's probe and `tightwad doctor` both ask here, so they agree.
//!
//! Why the default follows the path: a target that verifies a draft in ONE sequence (the bundled
//! llama.cpp patch) pays nearly the same for 8 draft tokens as for 4 on a GPU, so a cap of 4 left
//! speed unclaimed — on the H100 benchmark's fast target, k ≤ 4 predicted 0.76x and served the
//! target alone, where k ≤ 8 measured 1.09–1.12x. A target that verifies one prompt per position
//! pays `(k+1)(a+1) + k(k+1)/2` tokens a round and one slot per position: 4 stays its default.
//! The adaptive controller still picks k per round below the cap, from measured costs.

use super::controller::K_MAX;

/// The cap without `draft_tokens` where the target verifies one prompt per position (a stock
/// llama-server, vLLM) or speculates by itself (native pairing, steered by `speculative.n_max`).
pub const MULTI_PROMPT_DEFAULT: usize = 4;

/// The cap without `draft_tokens` where the target verifies a draft in one sequence: the most
/// the controller drafts; the target's own limit (`draft_tokens_max` in `/props`) applies after.
pub const ONE_PASS_DEFAULT: usize = K_MAX;

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
