//! Shadow drafting: while speculation is off, the draft is asked in the background what it would
//! have proposed inside the target's own answers, so the controller knows when turning it back on
//! would pay — at no cost to the target.

use super::pairing::Pairing;
use super::request::Run;
use crate::backend::Sampling;

impl Pairing {
    /// While speculation is off, estimate the draft's acceptance without costing the target
    /// anything: ask the draft what it would have proposed at a few points of the answer the
    /// target just gave, and compare. Runs in the background on the draft host only.
    pub(super) fn shadow(&self, slot: Option<usize>, run: &Run, prompt_tokens: usize) {
        let Some(d) = slot.and_then(|i| self.drafts.get(i)) else {
            return;
        };
        let draft = d.server.clone();
        if run.out.token_ids().is_none() {
            return;
        }
        let ctx = run.ctx.clone();
        let generated = ctx.len().saturating_sub(prompt_tokens);
        if generated < 8 {
            return;
        }
        let controller = d.controller.clone();
        let k = d.with_controller(|c| c.cap());
        tokio::spawn(async move {
            for i in 1..=3 {
                let at = prompt_tokens + generated * i / 4;
                let Some(actual) = ctx.get(at..(at + k).min(ctx.len())) else {
                    break;
                };
                let Ok(proposal) = draft
                    .complete(&ctx[..at], actual.len(), &Sampling::greedy())
                    .await
                else {
                    break;
                };
                let agreed = proposal
                    .tokens
                    .iter()
                    .zip(actual)
                    .take_while(|(a, b)| a == b)
                    .count();
                let mut c = controller
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                c.record_shadow(actual.len(), agreed);
            }
        });
    }
}
