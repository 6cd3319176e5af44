//! Whether a pairing's target verifies a whole draft in one sequence (Tightwad's bundled llama.cpp
//! patches, advertised in `/props`), for drafts as long as the pairing asks, and returns each
//! token's text with it; else how to get there.

use tightwad_serve::backend::llamacpp::{Capabilities, Props};
use tightwad_serve::engine::draft_length;

use crate::doctor::report::{Category, Check, Status};

/// Judge the target's `/props` (read once by the caller for every check that needs it), for a
/// pairing whose `draft_tokens` is `configured` (`None`: the proxy's default for the path).
pub(super) fn one_pass_check(
    name: &str,
    props: &Result<Props, String>,
    configured: Option<usize>,
) -> Check {
    let subject = format!("pairing {name} target");
    match props {
        Ok(props) => verdict(subject, &props.capabilities, &props.build_info, configured),
        Err(e) => Check::new(
            Category::Build,
            subject,
            Status::Skip,
            format!("cannot read /props: {e}"),
        ),
    }
}

/// The check for a target that advertises `caps` (pure, so every branch is tested). The longest
/// draft it verifies is [`Capabilities::one_pass_max`], the proxy's own reading of `/props`.
fn verdict(subject: String, caps: &Capabilities, build: &str, configured: Option<usize>) -> Check {
    let Some(max) = caps.one_pass_max() else {
        return Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("stock llama-server ({build}): drafts are verified with one prompt per position (k + 1 slots, far more target work per round)"),
        )
        .hint("tightwad build --source llama.cpp.tar.gz (applies Tightwad's bundled patch on every host), then start the target with --spec-draft-n-max 8");
    };
    let wanted = draft_length::wanted(configured, true);
    if max == 0 {
        return Check::new(
            Category::Build,
            subject,
            Status::Warn,
            "the target is patched but takes client drafts of 0 tokens (--spec-draft-n-max 0): drafts are verified with one prompt per position",
        )
        .hint(format!("start the target with --spec-draft-n-max {wanted}"));
    }
    let (k, cut) = draft_length::one_pass(configured, max);
    if cut {
        return Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("one-pass verification available, but for drafts of at most {max} tokens (draft_tokens = {wanted} is capped at {k})"),
        )
        .hint(format!("start the target with --spec-draft-n-max {wanted}"));
    }
    if !caps.return_pieces {
        // A build of the first two patches: it verifies in one pass, but a round whose draft
        // holds a token the proxy has not seen yet asks for token details (`n_probs`, a softmax
        // over the vocabulary per token: 2.3 ms of a 1 + 8 token verification on an H100).
        return Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("one-pass verification available, but the target's patched build ({build}) predates `return_pieces`: rounds with tokens the proxy has not seen yet ask for token details, a cost per round on a fast target"),
        )
        .hint("tightwad build --source llama.cpp.tar.gz (the bundled patches now include 0003-server-return-pieces)");
    }
    if !caps.cached_prefix {
        // A build of the first five patches: every round sends the whole context (~7 bytes a
        // token as JSON, 40 KB a round at 3000 tokens), parsed before the round can start.
        return Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("one-pass verification available, but the target's patched build ({build}) predates `cached_prefix`: every round sends the whole context, a cost per round that grows with the conversation"),
        )
        .hint("tightwad build --source llama.cpp.tar.gz (the bundled patches now include 0006-server-cached-prefix)");
    }
    let mut message = format!(
        "one-pass verification available: the target checks a draft of up to {max} tokens in one sequence; the proxy drafts up to {k}"
    );
    if configured.is_none() && k < draft_length::ONE_PASS_DEFAULT {
        message.push_str(&format!(
            " (--spec-draft-n-max {} on the target would let it go to {})",
            draft_length::ONE_PASS_DEFAULT,
            draft_length::ONE_PASS_DEFAULT
        ));
    }
    Check::new(Category::Build, subject, Status::Pass, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(draft_tokens: bool, max: Option<u32>, return_pieces: bool) -> Capabilities {
        Capabilities {
            draft_tokens,
            draft_tokens_max: max,
            speculative_n_max: draft_tokens,
            return_pieces,
            stop_p_min: return_pieces,
            cached_prefix: return_pieces,
        }
    }

    fn judge(c: Capabilities, k: impl Into<Option<usize>>) -> Check {
        verdict("pairing p target".into(), &c, "b1-abc", k.into())
    }

    #[test]
    fn every_patch_and_a_long_enough_draft_pass() {
        let c = judge(caps(true, Some(8), true), 8);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.message.ends_with("the proxy drafts up to 8"), "{c:?}");
    }

    #[test]
    fn a_capped_draft_length_says_how_to_lift_it() {
        let c = judge(caps(true, Some(4), true), 8);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.hint.as_deref(),
            Some("start the target with --spec-draft-n-max 8")
        );
    }

    /// llama.cpp's default `--spec-draft-n-max` is 3: a patched target that states no limit
    /// takes drafts of 3 (the proxy's reading), so a configured k of 4 is capped.
    #[test]
    fn a_patched_target_that_states_no_limit_takes_three() {
        let c = judge(caps(true, None, true), 4);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.message.contains("at most 3 tokens"), "{c:?}");
        assert_eq!(judge(caps(true, None, true), 3).status, Status::Pass);
    }

    /// Without `draft_tokens` the proxy takes what the target verifies: no warning for a lower
    /// limit, but the message says what would lift it.
    #[test]
    fn an_unset_draft_length_takes_the_targets_limit() {
        let c = judge(caps(true, Some(4), true), None);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.message.contains("the proxy drafts up to 4"), "{c:?}");
        assert!(c.message.contains("--spec-draft-n-max 8"), "{c:?}");
        let full = judge(caps(true, Some(8), true), None);
        assert!(
            full.message.ends_with("the proxy drafts up to 8"),
            "{full:?}"
        );
    }

    #[test]
    fn a_target_that_takes_drafts_of_zero_is_multi_prompt() {
        let c = judge(caps(true, Some(0), true), None);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert_eq!(
            c.hint.as_deref(),
            Some("start the target with --spec-draft-n-max 8")
        );
    }

    #[test]
    fn a_patched_build_without_return_pieces_is_told_to_rebuild() {
        let c = judge(caps(true, Some(8), false), 8);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("predates `return_pieces`"), "{c:?}");
        assert!(c.message.contains("b1-abc"), "{c:?}");
        assert!(
            c.hint
                .as_deref()
                .unwrap_or_default()
                .contains("tightwad build"),
            "{c:?}"
        );
    }

    #[test]
    fn a_patched_build_without_cached_prefix_is_told_to_rebuild() {
        let mut older = caps(true, Some(8), true);
        older.cached_prefix = false;
        let c = judge(older, 8);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("predates `cached_prefix`"), "{c:?}");
        assert!(
            c.hint
                .as_deref()
                .unwrap_or_default()
                .contains("0006-server-cached-prefix"),
            "{c:?}"
        );
    }

    #[test]
    fn a_stock_build_gets_the_patch() {
        let c = judge(caps(false, None, false), 4);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.message.starts_with("stock llama-server (b1-abc)"),
            "{c:?}"
        );
    }
}
