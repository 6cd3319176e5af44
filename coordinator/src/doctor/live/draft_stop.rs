//! Whether a pairing's draft server ends a draft where its model is unsure (`draft_p_min`, the
//! bundled llama.cpp patch 0004's `stop_p_min`). A build without it ignores the field and drafts
//! k tokens every round: the ones after a token the draft model doubts are paid for and mostly
//! rejected. Nothing breaks, so only doctor says it.

use tightwad_serve::backend::llamacpp::{Capabilities, Props};

use crate::doctor::report::{Category, Check, Status};

/// Judge the draft server's `/props` for a pairing whose drafts stop below `p_min` (above 0: the
/// caller asks only then, so a pairing without a floor reads no draft `/props`).
pub(super) fn draft_stop_check(name: &str, props: &Result<Props, String>, p_min: f64) -> Check {
    let subject = format!("pairing {name} draft");
    match props {
        Ok(props) => verdict(subject, &props.capabilities, &props.build_info, p_min),
        Err(e) => Check::new(
            Category::Build,
            subject,
            Status::Skip,
            format!("cannot read /props: {e}"),
        ),
    }
}

/// The check for a draft server that advertises `caps` (pure, so every branch is tested).
fn verdict(subject: String, caps: &Capabilities, build: &str, p_min: f64) -> Check {
    if caps.stop_p_min {
        return Check::new(
            Category::Build,
            subject,
            Status::Pass,
            format!(
                "the draft server ends a draft after a token its model gives less than {p_min}"
            ),
        );
    }
    Check::new(
        Category::Build,
        subject,
        Status::Warn,
        format!("the draft server's build ({build}) ends no draft early: every round drafts its full k, past tokens the draft model is unsure of (draft_p_min = {p_min} has no effect)"),
    )
    .hint("tightwad build --source llama.cpp.tar.gz on the draft's host (the bundled patches include 0004-server-stop-p-min)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(stop_p_min: bool, p_min: f64) -> Check {
        let caps = Capabilities {
            stop_p_min,
            ..Capabilities::default()
        };
        verdict("pairing p draft".into(), &caps, "b1-abc", p_min)
    }

    #[test]
    fn a_patched_draft_passes_and_names_the_floor() {
        let c = judge(true, 0.3);
        assert_eq!(c.status, Status::Pass, "{c:?}");
        assert!(c.message.contains("less than 0.3"), "{c:?}");
    }

    #[test]
    fn a_build_without_the_stop_is_told_to_rebuild() {
        let c = judge(false, 0.3);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.message.contains("b1-abc"), "{c:?}");
        assert!(c.hint.as_deref().unwrap_or("").contains("0004"), "{c:?}");
    }
}
