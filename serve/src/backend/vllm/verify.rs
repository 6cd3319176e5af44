//! Verification against vLLM, the part that decides exactness (the parent module says how): greedy
//! in one sequence with `prompt_logprobs`, sampled with several prompts the server samples itself.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{completion_for, ended_by_eos, PromptLogprob, VllmServer};
use crate::backend::types::{Completion, Sampling, TokenId};
use crate::backend::BackendError;

impl VllmServer {
    /// The target's own choice after `ctx`, `ctx+d1`, …, `ctx+d1..dk`: k + 1 results in order.
    /// Greedy: one sequence with `prompt_logprobs`; otherwise the several-prompts form.
    pub async fn verify(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
        sampling: &Sampling,
    ) -> Result<Vec<Completion>, BackendError> {
        if sampling.is_greedy() {
            self.verify_greedy(ctx, proposal).await
        } else {
            self.verify_sampled(ctx, proposal, sampling).await
        }
    }

    async fn verify_greedy(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
    ) -> Result<Vec<Completion>, BackendError> {
        let path = "/v1/completions";
        if ctx.is_empty() {
            return Err(self
                .ep
                .malformed(path, "cannot verify after an empty context"));
        }
        let prompt: Vec<TokenId> = [ctx, proposal].concat();
        let mut body = Self::completion_body(json!(prompt), 1, &Sampling::greedy());
        if let Value::Object(m) = &mut body {
            m.insert("prompt_logprobs".into(), json!(1));
        }
        let resp = self.completions(&body).await?;
        let choice = resp
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| self.ep.malformed(path, "no choices in the reply"))?;
        let positions = choice.prompt_logprobs.as_ref().ok_or_else(|| {
            self.ep
                .malformed(path, "no `prompt_logprobs` although they were requested")
        })?;
        if positions.len() != prompt.len() {
            return Err(self.ep.malformed(
                path,
                format!(
                    "{} prompt_logprobs entries for a {}-token prompt",
                    positions.len(),
                    prompt.len()
                ),
            ));
        }
        let mut results = Vec::with_capacity(proposal.len() + 1);
        // Position ctx.len() + i scores proposal[i] and holds the argmax after ctx + d[..i].
        for (i, entry) in positions[ctx.len()..].iter().enumerate() {
            let entry = entry.as_ref().ok_or_else(|| {
                self.ep.malformed(
                    path,
                    format!("no log-probabilities for prompt position {}", ctx.len() + i),
                )
            })?;
            let (id, lp) = argmax(entry).ok_or_else(|| {
                self.ep.malformed(
                    path,
                    format!("no rank-1 token at prompt position {}", ctx.len() + i),
                )
            })?;
            results.push(completion_for(
                id,
                lp.decoded_token.as_deref().unwrap_or(""),
                false,
            ));
        }
        let bonus = choice
            .token_ids
            .as_ref()
            .and_then(|t| t.first())
            .copied()
            .ok_or_else(|| self.ep.malformed(path, "no generated token (`token_ids`)"))?;
        results.push(completion_for(bonus, &choice.text, ended_by_eos(&choice)));
        Ok(results)
    }

    async fn verify_sampled(
        &self,
        ctx: &[TokenId],
        proposal: &[TokenId],
        sampling: &Sampling,
    ) -> Result<Vec<Completion>, BackendError> {
        let path = "/v1/completions";
        let prompts: Vec<Vec<TokenId>> = (0..=proposal.len())
            .map(|i| [ctx, &proposal[..i]].concat())
            .collect();
        // Never one seed for all positions: identical draws would correlate acceptances.
        let unseeded = Sampling {
            seed: None,
            ..*sampling
        };
        let resp = self
            .completions(&Self::completion_body(json!(prompts), 1, &unseeded))
            .await?;
        if resp.choices.len() != prompts.len() {
            return Err(self.ep.malformed(
                path,
                format!(
                    "{} choices for {} prompts",
                    resp.choices.len(),
                    prompts.len()
                ),
            ));
        }
        let mut results: Vec<Option<Completion>> = vec![None; prompts.len()];
        for choice in &resp.choices {
            let id = choice
                .token_ids
                .as_ref()
                .and_then(|t| t.first())
                .copied()
                .ok_or_else(|| {
                    self.ep
                        .malformed(path, "a choice without its sampled token")
                })?;
            let slot = results.get_mut(choice.index).ok_or_else(|| {
                self.ep
                    .malformed(path, format!("choice index {} out of range", choice.index))
            })?;
            *slot = Some(completion_for(id, &choice.text, ended_by_eos(choice)));
        }
        results
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.ep.malformed(path, "a prompt without its choice"))
    }
}

/// The rank-1 entry of one `prompt_logprobs` position (highest log-probability if ranks are
/// missing), with its id parsed from the JSON key.
pub(super) fn argmax(entry: &HashMap<String, PromptLogprob>) -> Option<(TokenId, &PromptLogprob)> {
    let parsed = entry
        .iter()
        .filter_map(|(k, v)| Some((k.parse::<TokenId>().ok()?, v)));
    if let Some(best) = parsed.clone().find(|(_, v)| v.rank == Some(1)) {
        return Some(best);
    }
    parsed
        .filter(|(_, v)| v.logprob.is_some_and(f64::is_finite))
        .max_by(|a, b| {
            let (x, y) = (
                a.1.logprob.unwrap_or(f64::MIN),
                b.1.logprob.unwrap_or(f64::MIN),
            );
            x.total_cmp(&y).then(b.0.cmp(&a.0))
        })
}
