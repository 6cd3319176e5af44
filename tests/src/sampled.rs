//! Sampled exactness: do answers sampled through the proxy come from the same distribution as the
//! target's own? Greedy answers are compared token by token ([`crate::exactness`]); sampled ones can
//! only be compared as two samples.
//!
//! Why not per-position token counts: on the test models (and real ones) sampled answers part ways
//! within a few tokens, so by token 8 nearly every answer holds a token no other answer has at that
//! position, and counts of tokens carry no information. Instead every sampled token is judged by the
//! TARGET at its own prefix ([`Pick`]: was it the target's first, second, third choice, a lower one,
//! or outside what the target's sampler could ever pick), the same judge for both samples. If the
//! proxy samples exactly as the target does, the two samples' answers are identically distributed,
//! so their pick sequences are too, whatever the judge's own numerical noise.
//!
//! The comparison ([`same_distribution`]) is a permutation test on whole answers: the statistic
//! is the two-sample chi-square of the picks pooled over all positions; its null distribution is
//! made by reshuffling which answers belong to which sample (answers are exchangeable under the
//! null; positions within an answer need not be independent, so answers, not tokens, are shuffled).
//! No table or approximation is involved, and the test's false-alarm rate is the chosen level.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::http::post_json;

/// How the target judges one sampled token at its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pick {
    /// Among the target's candidates, by rank (0 = its most likely token); ranks from
    /// [`LOWEST_RANK`] on are one category.
    Rank(u8),
    /// Not among the tokens the target's sampler could pick there (after top-k, top-p, min-p).
    Outside,
    /// The answer had ended before this position.
    Ended,
}

/// Ranks at and below this one are pooled (they are rare; apart they would leave cells nearly empty).
pub const LOWEST_RANK: u8 = 3;

const CATEGORIES: usize = LOWEST_RANK as usize + 3;

impl Pick {
    fn rank(rank: usize) -> Pick {
        Pick::Rank(rank.min(LOWEST_RANK as usize) as u8)
    }

    fn index(self) -> usize {
        match self {
            Pick::Rank(r) => r.min(LOWEST_RANK) as usize,
            Pick::Outside => LOWEST_RANK as usize + 1,
            Pick::Ended => LOWEST_RANK as usize + 2,
        }
    }
}

/// One answer's picks, position by position (`length` positions: short answers end in
/// [`Pick::Ended`]).
pub fn picks(judged: impl IntoIterator<Item = Pick>, length: usize) -> Vec<Pick> {
    let mut out: Vec<Pick> = judged.into_iter().take(length).collect();
    out.resize(length, Pick::Ended);
    out
}

/// The outcome of [`same_distribution`].
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Two-sample chi-square of the pooled picks.
    pub chi_square: f64,
    /// Permutation p-value: the share of label reshufflings (the observed one included) whose
    /// statistic is at least the observed one.
    pub p_value: f64,
    /// Pooled picks per category, first sample then second: for the failure message.
    pub counts: [[u64; CATEGORIES]; 2],
}

impl Comparison {
    /// The samples differ at this level (the chance of saying so when they do not is `level`).
    pub fn differs_at(&self, level: f64) -> bool {
        self.p_value <= level
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chi-square {:.1}, p = {:.5}; picks [rank 0, 1, 2, lower, outside, ended]: {:?} vs {:?}",
            self.chi_square, self.p_value, self.counts[0], self.counts[1]
        )
    }
}

fn histogram(answer: &[Pick]) -> [u64; CATEGORIES] {
    let mut h = [0; CATEGORIES];
    for p in answer {
        h[p.index()] += 1;
    }
    h
}

fn chi_square(a: &[u64; CATEGORIES], b: &[u64; CATEGORIES]) -> f64 {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    a.iter()
        .zip(b)
        .filter(|(x, y)| **x + **y > 0)
        .map(|(&x, &y)| {
            let total = (x + y) as f64;
            let (ea, eb) = (total * na / (na + nb), total * nb / (na + nb));
            (x as f64 - ea).powi(2) / ea + (y as f64 - eb).powi(2) / eb
        })
        .sum()
}

fn pooled(histograms: &[[u64; CATEGORIES]], members: &[usize]) -> [u64; CATEGORIES] {
    let mut sum = [0; CATEGORIES];
    for &i in members {
        for (s, h) in sum.iter_mut().zip(&histograms[i]) {
            *s += h;
        }
    }
    sum
}

/// Are answers `a` and `b` (their picks) samples of one distribution? A permutation test with
/// `permutations` reshufflings drawn from a generator seeded with `seed` (so a run is repeatable).
/// The smallest p-value it can give is `1 / (permutations + 1)`.
pub fn same_distribution(
    a: &[Vec<Pick>],
    b: &[Vec<Pick>],
    permutations: usize,
    seed: u64,
) -> Comparison {
    let histograms: Vec<[u64; CATEGORIES]> =
        a.iter().chain(b).map(|answer| histogram(answer)).collect();
    let mut order: Vec<usize> = (0..histograms.len()).collect();
    let split = |order: &[usize]| {
        let (first, second) = order.split_at(a.len());
        (pooled(&histograms, first), pooled(&histograms, second))
    };
    let (ca, cb) = split(&order);
    let observed = chi_square(&ca, &cb);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut as_large = 1; // the observed labelling is one of the permutations
    for _ in 0..permutations {
        order.shuffle(&mut rng);
        let (pa, pb) = split(&order);
        // Equal statistics count against the null (a conservative p-value).
        if chi_square(&pa, &pb) >= observed - 1e-9 {
            as_large += 1;
        }
    }
    Comparison {
        chi_square: observed,
        p_value: as_large as f64 / (permutations + 1) as f64,
        counts: [ca, cb],
    }
}

/// A llama-server's own judgement of `answer` after `prompt` (token ids, BOS included): at every
/// position, the rank of the answer's token among the server's post-sampler candidates for that
/// prefix (with `sampling`: temperature, top_k, top_p, min_p), or [`Pick::Outside`]. One request
/// (one prompt per prefix, processed together in the server's slots).
pub async fn llama_server_picks(
    url: &str,
    prompt: &[u64],
    answer: &[u64],
    sampling: &Value,
) -> Vec<Pick> {
    if answer.is_empty() {
        return Vec::new();
    }
    let prefixes: Vec<Vec<u64>> = (0..answer.len())
        .map(|i| [prompt, &answer[..i]].concat())
        .collect();
    let mut body = json!({
        "prompt": prefixes, "n_predict": 1, "n_probs": 100, "post_sampling_probs": true,
        "cache_prompt": true,
    });
    crate::http::merge(&mut body, sampling.clone());
    let (status, v) = post_json(&format!("{url}/completion"), &body).await;
    assert_eq!(status, 200, "judging an answer failed: {v}");
    let results = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
    assert_eq!(results.len(), answer.len(), "one result per prefix: {v}");
    results
        .iter()
        .zip(answer)
        .map(|(r, token)| {
            let mut candidates: Vec<(u64, f64)> = r["completion_probabilities"][0]["top_probs"]
                .as_array()
                .unwrap_or_else(|| panic!("no candidates in {r}"))
                .iter()
                .filter_map(|c| Some((c["id"].as_u64()?, c["prob"].as_f64()?)))
                .filter(|(_, p)| *p > 0.0)
                .collect();
            let covered: f64 = candidates.iter().map(|c| c.1).sum();
            assert!(
                covered > 0.99,
                "the server listed only {covered:.3} of its post-sampler distribution: raise n_probs"
            );
            candidates.sort_by(|x, y| y.1.total_cmp(&x.1));
            match candidates.iter().position(|(id, _)| id == token) {
                Some(rank) => Pick::rank(rank),
                None => Pick::Outside,
            }
        })
        .collect()
}

/// A vLLM server's judgement of `answer` after `prompt`: at every position, the rank vLLM gives the
/// answer's token among all tokens for that prefix (its raw `prompt_logprobs` rank; vLLM reports
/// no post-sampler candidates, so there is no [`Pick::Outside`] here). One request.
pub async fn vllm_picks(url: &str, model: &str, prompt: &[u64], answer: &[u64]) -> Vec<Pick> {
    if answer.is_empty() {
        return Vec::new();
    }
    let whole: Vec<u64> = [prompt, answer].concat();
    let body = json!({
        "model": model, "prompt": whole, "max_tokens": 1, "temperature": 0,
        "prompt_logprobs": 1,
    });
    let (status, v) = post_json(&format!("{url}/v1/completions"), &body).await;
    assert_eq!(status, 200, "judging an answer failed: {v}");
    let positions = v["choices"][0]["prompt_logprobs"]
        .as_array()
        .unwrap_or_else(|| panic!("no prompt_logprobs in {v}"));
    assert_eq!(positions.len(), whole.len(), "{v}");
    positions[prompt.len()..]
        .iter()
        .zip(answer)
        .map(|(entry, token)| {
            let ranks: HashMap<String, Value> = serde_json::from_value(entry.clone())
                .unwrap_or_else(|e| panic!("prompt_logprobs entry {entry}: {e}"));
            let rank = ranks
                .get(&token.to_string())
                .and_then(|l| l["rank"].as_u64())
                .unwrap_or_else(|| panic!("no rank for token {token} in {entry}"));
            Pick::rank(rank.saturating_sub(1) as usize)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(rank0: usize, rank1: usize, n: usize) -> Vec<Vec<Pick>> {
        (0..n)
            .map(|i| {
                (0..rank0 + rank1)
                    .map(|j| {
                        if (j + i) % (rank0 + rank1) < rank0 {
                            Pick::Rank(0)
                        } else {
                            Pick::Rank(1)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn identical_samples_do_not_differ_and_shifted_ones_do() {
        let a = answers(7, 3, 50);
        let same = same_distribution(&a, &a.clone(), 999, 1);
        assert!(!same.differs_at(0.01), "{same}");
        let b = answers(9, 1, 50);
        let shifted = same_distribution(&a, &b, 999, 1);
        assert!(shifted.differs_at(0.01), "{shifted}");
        assert!((shifted.p_value - 0.001).abs() < 1e-12, "{shifted}");
    }

    #[test]
    fn short_answers_are_padded_with_ended() {
        assert_eq!(
            picks([Pick::Rank(0)], 3),
            vec![Pick::Rank(0), Pick::Ended, Pick::Ended]
        );
        assert_eq!(Pick::rank(7), Pick::Rank(LOWEST_RANK));
    }
}
