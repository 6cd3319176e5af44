//! The simulation's "language model": a deterministic function from context to next token.
//!
//! The target's greedy choice after a context is [`truth`], a hash of the context (its last
//! [`WINDOW`] tokens and its length) mapped onto printable text. A draft instance agrees with the
//! truth with probability α, decided by another hash of the same context and a seed: acceptance
//! is an i.i.d. Bernoulli(α) per position, as in the analytic model (`E(k) = (1 − α^{k+1}) / (1 −
//! α)`), yet every run repeats exactly.

use super::tokenizer::{token_of_byte, TokenId};

/// How many trailing tokens the next token depends on (besides the context's length).
pub const WINDOW: usize = 8;

/// What the simulated text is made of: printable, valid UTF-8 one byte at a time.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz     etaoin,.";

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn context_hash(ctx: &[TokenId], salt: u64) -> u64 {
    let mut h = mix(salt ^ ctx.len() as u64);
    for &t in &ctx[ctx.len().saturating_sub(WINDOW)..] {
        h = mix(h ^ u64::from(t));
    }
    h
}

fn letter(index: u64) -> TokenId {
    // `index % len` is always a valid index.
    token_of_byte(ALPHABET[(index % ALPHABET.len() as u64) as usize])
}

/// The target's greedy next token after `ctx`.
pub fn truth(ctx: &[TokenId]) -> TokenId {
    letter(context_hash(ctx, 0x7467_7761_6400))
}

/// Who a simulated server speaks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speaker {
    /// The target: always the truth.
    Target,
    /// A draft that agrees with the truth with probability `acceptance` at every position.
    Draft { acceptance: f64, seed: u64 },
}

impl Speaker {
    /// The greedy next token after `ctx`.
    pub fn next(&self, ctx: &[TokenId]) -> TokenId {
        let right = truth(ctx);
        match *self {
            Speaker::Target => right,
            Speaker::Draft { acceptance, seed } => {
                let h = context_hash(ctx, seed ^ 0xD4AF_7000);
                let u = (h >> 11) as f64 / (1u64 << 53) as f64;
                if u < acceptance {
                    right
                } else {
                    // Any other letter: a token the target would not have chosen.
                    let start = mix(h);
                    (0..ALPHABET.len() as u64)
                        .map(|i| letter(start.wrapping_add(i)))
                        .find(|&t| t != right)
                        .unwrap_or(right)
                }
            }
        }
    }

    /// `n` greedy tokens after `ctx`.
    pub fn continue_greedy(&self, ctx: &[TokenId], n: usize) -> Vec<TokenId> {
        let mut all = ctx.to_vec();
        for _ in 0..n {
            let t = self.next(&all);
            all.push(t);
        }
        all.split_off(ctx.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draft_agrees_about_as_often_as_configured() {
        for alpha in [0.5, 0.7, 0.9] {
            let draft = Speaker::Draft {
                acceptance: alpha,
                seed: 7,
            };
            let mut ctx = vec![1u32];
            let mut agreed = 0;
            let n = 4000;
            for _ in 0..n {
                let t = truth(&ctx);
                if draft.next(&ctx) == t {
                    agreed += 1;
                }
                ctx.push(t);
            }
            let rate = f64::from(agreed) / f64::from(n);
            assert!(
                (rate - alpha).abs() < 0.04,
                "alpha {alpha}: measured {rate}"
            );
        }
    }

    #[test]
    fn the_same_context_gives_the_same_token() {
        let ctx: Vec<u32> = (1..40).collect();
        assert_eq!(truth(&ctx), truth(&ctx));
        let draft = Speaker::Draft {
            acceptance: 0.5,
            seed: 1,
        };
        assert_eq!(
            draft.continue_greedy(&ctx, 16),
            draft.continue_greedy(&ctx, 16)
        );
        assert_eq!(Speaker::Target.continue_greedy(&ctx, 3)[0], truth(&ctx));
    }
}
