//! The acceptance rule: which of the draft's tokens the target's own choices confirm.
//!
//! Sample-match verification: for every draft prefix the target picks its own next token (argmax
//! when greedy, a sample from its post-sampler distribution otherwise). Draft token `d[i]` is
//! accepted while the target's choice after `d[..i]` equals it; at the first mismatch the target's
//! choice is emitted instead, and if everything matched the target's choice after the whole draft
//! comes as a bonus. Every emitted token is therefore a token the target itself chose given exactly
//! the tokens before it: the output is the target's, for any sampler and any draft.

use rand::Rng;

use crate::backend::types::{Candidate, TokenId};

/// The target's choice at one position, with the bytes to show for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub id: TokenId,
    /// `None` when the server left the token's details out (its text ends mid-character).
    pub bytes: Option<Vec<u8>>,
    pub end_of_generation: bool,
}

/// How many draft tokens the target's choices confirm. `choices[i]` is the target's token after
/// the context plus `draft[..i]`; `choices.len() == draft.len() + 1`.
pub fn accepted_prefix(draft: &[TokenId], choices: &[Choice]) -> usize {
    draft
        .iter()
        .zip(choices)
        .take_while(|(d, c)| **d == c.id)
        .count()
}

/// Draw one token from a post-sampler distribution, or `None` when the listed candidates do not
/// cover the distribution (the caller then lets the target sample by itself).
pub fn sample<'a>(candidates: &'a [Candidate], rng: &mut impl Rng) -> Option<&'a Candidate> {
    let total: f64 = candidates.iter().filter_map(|c| c.prob).sum();
    if candidates.is_empty() || total < 0.995 {
        return None;
    }
    let mut u = rng.random::<f64>() * total;
    for c in candidates {
        let p = c.prob.unwrap_or(0.0);
        if u < p {
            return Some(c);
        }
        u -= p;
    }
    candidates
        .iter()
        .rev()
        .find(|c| c.prob.unwrap_or(0.0) > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn choice(id: TokenId) -> Choice {
        Choice {
            id,
            bytes: None,
            end_of_generation: false,
        }
    }

    #[test]
    fn accepts_the_longest_agreeing_prefix() {
        let choices: Vec<_> = [1, 2, 9, 4, 5].into_iter().map(choice).collect();
        assert_eq!(accepted_prefix(&[1, 2, 3, 4], &choices), 2);
        assert_eq!(accepted_prefix(&[1, 2, 9, 4], &choices), 4);
        assert_eq!(accepted_prefix(&[7, 2, 9, 4], &choices), 0);
        assert_eq!(accepted_prefix(&[], &choices[..1]), 0);
    }

    fn cand(id: TokenId, p: f64) -> Candidate {
        Candidate {
            id,
            bytes: vec![],
            prob: Some(p),
            logprob: None,
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        let cands = vec![cand(1, 0.7), cand(2, 0.2), cand(3, 0.1)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            let c = sample(&cands, &mut rng).expect("covered distribution samples");
            counts[c.id as usize] += 1;
        }
        let freq = |i: usize| counts[i] as f64 / 20_000.0;
        assert!((freq(1) - 0.7).abs() < 0.02, "{counts:?}");
        assert!((freq(2) - 0.2).abs() < 0.02, "{counts:?}");
        assert!((freq(3) - 0.1).abs() < 0.02, "{counts:?}");
    }

    #[test]
    fn an_uncovered_distribution_is_refused() {
        let cands = vec![cand(1, 0.5), cand(2, 0.3)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!(sample(&cands, &mut rng).is_none());
        assert!(sample(&[], &mut rng).is_none());
    }
}
