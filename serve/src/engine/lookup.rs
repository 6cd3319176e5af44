//! Prompt-lookup drafting: no draft model, the context itself proposes the continuation.
//!
//! If the last few tokens appeared before (in the prompt or the answer so far), the tokens that
//! followed them then are a cheap guess for what follows now. Free to compute, right often on
//! copy-heavy output (code edits, quoting, JSON, summaries) and rarely on free prose; verification
//! keeps the output exact either way, and the controller decides whether it pays.

use crate::backend::types::TokenId;

/// Longest and shortest n-gram matched against the context.
const MAX_NGRAM: usize = 4;
const MIN_NGRAM: usize = 1;

/// Up to `k` tokens that followed the most recent earlier occurrence of the context's last
/// n-gram (longest n first); empty when nothing matches.
pub fn propose(ctx: &[TokenId], k: usize) -> Vec<TokenId> {
    if k == 0 {
        return Vec::new();
    }
    for n in (MIN_NGRAM..=MAX_NGRAM).rev() {
        if ctx.len() <= n {
            continue;
        }
        let key = &ctx[ctx.len() - n..];
        // Search right to left, excluding the key itself.
        let found = (0..ctx.len() - n).rev().find(|&i| &ctx[i..i + n] == key);
        if let Some(i) = found {
            let start = i + n;
            let end = (start + k).min(ctx.len());
            if start < end {
                return ctx[start..end].to_vec();
            }
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_what_followed_the_last_occurrence() {
        // "a b c d e ... a b c" → propose "d e"
        let ctx = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        assert_eq!(propose(&ctx, 2), vec![4, 5]);
    }

    #[test]
    fn prefers_the_longest_match_and_the_most_recent_one() {
        let ctx = [7, 3, 8, 1, 3, 9, 1, 3];
        // "1 3" occurred at 3..5 followed by 9; "3" alone last occurred at 4 followed by 9 too.
        assert_eq!(propose(&ctx, 1), vec![9]);
        let ctx = [3, 5, 3, 6, 3];
        assert_eq!(propose(&ctx, 1), vec![6]);
    }

    #[test]
    fn nothing_to_propose_without_a_match() {
        assert!(propose(&[1, 2, 3, 4], 3).is_empty());
        assert!(propose(&[], 3).is_empty());
        assert!(propose(&[1, 1], 0).is_empty());
    }

    #[test]
    fn proposals_stop_at_the_end_of_the_context() {
        let ctx = [1, 2, 1];
        assert_eq!(propose(&ctx, 5), vec![2, 1]);
    }
}
