//! Whether a pairing's target verifies a whole draft in one sequence (Tightwad's bundled llama.cpp
//! patches, advertised in `/props`), for drafts as long as the pairing's k, and returns each
//! token's text with it; else how to get there.

use tightwad_serve::backend::llamacpp::{Capabilities, LlamaServer};

use crate::doctor::report::{Category, Check, Status};

/// Read the target's `/props` and judge it ([`verdict`]).
pub(super) async fn one_pass_check(name: &str, target: &LlamaServer, k: usize) -> Check {
    let subject = format!("pairing {name} target");
    match target.props().await {
        Ok(props) => verdict(subject, &props.capabilities, &props.build_info, k),
        Err(e) => Check::new(
            Category::Build,
            subject,
            Status::Skip,
            format!("cannot read /props: {e}"),
        ),
    }
}

/// The check for a target that advertises `caps` (pure, so every branch is tested).
fn verdict(subject: String, caps: &Capabilities, build: &str, k: usize) -> Check {
    match (caps.draft_tokens, caps.draft_tokens_max) {
        (true, Some(max)) if (max as usize) < k => Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("one-pass verification available, but for drafts of at most {max} tokens (k = {k} is capped)"),
        )
        .hint(format!("start the target with --spec-draft-n-max {k}")),
        // A build of the first two patches: it verifies in one pass, but a round whose draft
        // holds a token the proxy has not seen yet asks for token details (`n_probs`, a softmax
        // over the vocabulary per token: 2.3 ms of a 1 + 8 token verification on an H100).
        (true, _) if !caps.return_pieces => Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("one-pass verification available, but the target's patched build ({build}) predates `return_pieces`: rounds with tokens the proxy has not seen yet ask for token details, a cost per round on a fast target"),
        )
        .hint("tightwad build --source llama.cpp.tar.gz (the bundled patches now include 0003-server-return-pieces)"),
        (true, max) => Check::new(
            Category::Build,
            subject,
            Status::Pass,
            format!(
                "one-pass verification available: the target checks a draft of up to {} tokens in one sequence",
                max.map_or("3".to_string(), |m| m.to_string())
            ),
        ),
        (false, _) => Check::new(
            Category::Build,
            subject,
            Status::Warn,
            format!("stock llama-server ({build}): drafts are verified with one prompt per position (k + 1 slots, far more target work per round)"),
        )
        .hint("tightwad build --source llama.cpp.tar.gz (applies Tightwad's bundled patch on every host), then start the target with --spec-draft-n-max K"),
    }
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
        }
    }

    fn judge(c: Capabilities, k: usize) -> Check {
        verdict("pairing p target".into(), &c, "b1-abc", k)
    }

    #[test]
    fn every_patch_and_a_long_enough_draft_pass() {
        let c = judge(caps(true, Some(8), true), 8);
        assert_eq!(c.status, Status::Pass, "{c:?}");
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
    fn a_stock_build_gets_the_patch() {
        let c = judge(caps(false, None, false), 4);
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.message.starts_with("stock llama-server (b1-abc)"),
            "{c:?}"
        );
    }
}
