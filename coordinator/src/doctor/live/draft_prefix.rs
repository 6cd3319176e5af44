//! Whether a pairing's draft server takes a round's prompt as "the tokens your slot holds, then
//! these" (`cached_prefix`, the bundled llama.cpp patch 0006). A build without it gets the whole
//! context every round (about 7 bytes a token as JSON, parsed before the draft can start): nothing
//! breaks and short prompts do not notice, so only doctor says it. The target's side is part of
//! the one-pass check (`one_pass.rs`).

use tightwad_serve::backend::llamacpp::{Capabilities, Props};

use crate::doctor::report::{Category, Check, Status};

/// Judge the draft server's `/props` (read once by the caller for every draft check).
pub(super) fn draft_prefix_check(name: &str, props: &Result<Props, String>) -> Check {
    let subject = format!("pairing {name} draft");
    match props {
        Ok(props) => verdict(subject, &props.capabilities, &props.build_info),
        Err(e) => Check::new(
            Category::Build,
            subject,
            Status::Skip,
            format!("cannot read /props: {e}"),
        ),
    }
}

/// The check for a draft server that advertises `caps` (pure, so every branch is tested).
fn verdict(subject: String, caps: &Capabilities, build: &str) -> Check {
    if caps.cached_prefix {
        return Check::new(
            Category::Build,
            subject,
            Status::Pass,
            "the draft server takes cached prefixes: each round sends it only the tokens its slot does not hold",
        );
    }
    Check::new(
        Category::Build,
        subject,
        Status::Warn,
        format!("the draft server's build ({build}) predates `cached_prefix`: every round sends it the whole context, a cost per round that grows with the conversation"),
    )
    .hint("tightwad build --source llama.cpp.tar.gz on the draft's host (the bundled patches include 0006-server-cached-prefix)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(cached_prefix: bool) -> Check {
        let caps = Capabilities {
            cached_prefix,
            ..Capabilities::default()
        };
        verdict("pairing p draft".into(), &caps, "b1-abc")
    }

    #[test]
    fn a_patched_draft_passes() {
        assert_eq!(judge(true).status, Status::Pass);
    }

    #[test]
    fn an_older_or_stock_build_is_told_to_rebuild() {
        let c = judge(false);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.message.contains("b1-abc"), "{c:?}");
        assert!(c.hint.as_deref().unwrap_or("").contains("0006"), "{c:?}");
    }
}
