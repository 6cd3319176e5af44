//! The slots check: how many parallel slots (`-np`) a pairing's target needs for the k the proxy
//! will draft, by how it verifies (one prompt per position, or one sequence with the bundled
//! patch).

use crate::doctor::report::{Category, Check, Status};

/// The `-np` a target needs for `k` draft tokens per round: the proxy verifies the k drafted
/// tokens and the position after them as k + 1 prompts in one decode, one slot each (the rule of
/// `tightwad_serve::engine::probe::slots_for_verification`, which doctor, `init`'s agent snippets
/// and the proxy's `--help` all state).
pub fn target_slots(k: usize) -> usize {
    k + 1
}

/// The slots check: the target needs [`target_slots`]`(k)` slots (`-np`), the same rule `init`
/// writes and the proxy's `--help` states; one slot cannot verify at all. A target that verifies
/// a draft in one sequence (`one_pass`: the bundled patch, advertised in `/props`) needs one slot
/// a concurrent request whatever k is: asking it for k + 1 would cost KV memory for nothing.
pub fn slots_check(subject: &str, total_slots: u32, k: usize, one_pass: bool) -> Check {
    if one_pass && total_slots >= 1 {
        return Check::new(
            Category::Slots,
            subject.to_string(),
            Status::Pass,
            format!("the target verifies a draft in one sequence: k = {k} needs one slot a concurrent request (it has {total_slots})"),
        );
    }
    let needed = target_slots(k);
    if (total_slots as usize) >= needed {
        return Check::new(
            Category::Slots,
            subject.to_string(),
            Status::Pass,
            format!("the target has {total_slots} slots for k = {k} (needs {needed})"),
        );
    }
    Check::new(
        Category::Slots,
        subject.to_string(),
        if total_slots < 2 {
            Status::Fail
        } else {
            Status::Warn
        },
        format!("the target has {total_slots} slot(s); verifying k = {k} draft tokens one prompt per position needs {needed}"),
    )
    .hint(format!(
        "start the target llama-server with -np {needed} --kv-unified (or set a lower draft_tokens), or build it with the bundled patch (tightwad build): it verifies a draft in one slot"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One slot rule everywhere: k = 4 needs `-np 5`, which is what doctor asks for, what `init`
    /// writes into the target's agent snippet (tested there), and what the proxy's `--help`
    /// states (k + 1).
    #[test]
    fn the_slot_rule_is_k_plus_one() {
        let short = slots_check("pairing p", 4, 4, false);
        assert_eq!(short.status, Status::Warn);
        assert_eq!(
            short.hint.as_deref(),
            Some("start the target llama-server with -np 5 --kv-unified (or set a lower draft_tokens), or build it with the bundled patch (tightwad build): it verifies a draft in one slot")
        );
        assert_eq!(slots_check("pairing p", 5, 4, false).status, Status::Pass);
        assert_eq!(slots_check("pairing p", 1, 4, false).status, Status::Fail);
    }

    /// A target that verifies a draft in one sequence needs no slot per draft position: one slot
    /// serves a request at any k, and doctor does not ask for `-np k+1`.
    #[test]
    fn a_one_pass_target_needs_one_slot_at_any_k() {
        for (slots, k) in [(1, 8), (2, 4), (4, 8)] {
            let c = slots_check("pairing p", slots, k, true);
            assert_eq!(c.status, Status::Pass, "{c:?}");
            assert_eq!(c.hint, None, "{c:?}");
            assert!(c.message.contains("one sequence"), "{c:?}");
        }
        // A server reporting no slots at all is judged by the usual rule.
        assert_eq!(slots_check("pairing p", 0, 4, true).status, Status::Fail);
    }
}
