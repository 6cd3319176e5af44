//! Judging exactness: what the target alone produced ([`Reference`]), and a token-by-token
//! comparison that allows a divergence only at a numerical tie of the target's top two choices.
//! Also the prompt set the exactness tests run.

/// Prompts of every kind: short, long, code, lists, non-Latin scripts, numbers, whitespace.
pub fn prompts() -> Vec<String> {
    let base = [
        "Once upon a time",
        "The capital of France is",
        "def quicksort(arr):",
        "1, 2, 3, 4, 5,",
        "Dear Sir or Madam,",
        "In 1969, the first humans",
        "Ingredients:\n- 2 eggs\n-",
        "The quick brown fox",
        "Q: What is the speed of light?\nA:",
        "东京の天気は",
        "Москва — столица",
        "#include <stdio.h>\nint main() {",
        "SELECT name FROM users WHERE",
        "Translate to German: good morning",
        "🙂 emoji test:",
        "   leading spaces and\ttabs",
        "The mitochondria is the",
        "Step 1: preheat the oven.\nStep 2:",
        "<html><body><h1>",
        "To be or not to be,",
        "import numpy as np\nx = np.",
        "Roses are red, violets are",
        "The theory of relativity states that",
        "Once",
        "a",
        "Write a haiku about the sea:",
        "JSON: {\"name\": \"Ada\", \"age\":",
        "The year 2026 will be remembered for",
        "Chapter 1\n\nIt was a bright cold day in April, and the clocks were striking thirteen.",
        "A long prompt: ",
    ];
    let mut out: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    // Make the last one really long, so prompts span several hundred tokens.
    if let Some(last) = out.last_mut() {
        for i in 0..60 {
            last.push_str(&format!(
                "sentence number {i} talks about lighthouses and tides. "
            ));
        }
    }
    out
}

/// What the target alone produced for a prompt, with what is needed to judge a divergence.
#[derive(Debug, Clone)]
pub struct Reference {
    pub tokens: Vec<u64>,
    pub text: String,
    /// Per position: log-probability gap between the target's first and second choice.
    pub margins: Vec<f64>,
    /// Per position: the target's second choice.
    pub runner_up: Vec<u64>,
    pub stop_type: String,
}

/// Below this top-two gap, two different CPU kernels (one-token decode vs batched verification)
/// may legitimately pick different tokens: the target's own choice is a numerical tie there.
pub const TIE_MARGIN: f64 = 0.05;

/// How a proxied generation compared with the target alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Agreement {
    Identical,
    /// Identical up to this position, where the target's top two choices were a numerical tie and
    /// the proxy took the runner-up; nothing after it can be compared.
    TieAt(usize),
}

/// Compare a proxied generation with the target alone, token by token. A divergence is allowed only
/// where the target's own top two choices were a numerical tie and the proxy took the runner-up.
pub fn compare(proxy: &[u64], reference: &Reference, label: &str) -> Agreement {
    let first_difference = proxy
        .iter()
        .zip(&reference.tokens)
        .position(|(a, b)| a != b);
    match first_difference {
        None => {
            assert_eq!(
                proxy.len(),
                reference.tokens.len(),
                "{label}: the proxy produced {} tokens, the target alone {}",
                proxy.len(),
                reference.tokens.len()
            );
            Agreement::Identical
        }
        Some(i) => {
            let margin = reference.margins.get(i).copied().unwrap_or(f64::INFINITY);
            assert!(
                margin < TIE_MARGIN,
                "{label}: the proxy diverged from the target at token {i} (proxy {}, target {}) where the target's top-two margin was {margin:.4} — not a numerical tie, a real difference",
                proxy[i],
                reference.tokens[i]
            );
            assert_eq!(
                Some(&proxy[i]),
                reference.runner_up.get(i),
                "{label}: at the tie at token {i} the proxy took neither of the target's two choices"
            );
            Agreement::TieAt(i)
        }
    }
}

/// Assert ties are the rare exception they must be (a systematic error would diverge everywhere).
pub fn assert_ties_are_rare(outcomes: &[Agreement]) {
    let ties = outcomes
        .iter()
        .filter(|o| **o != Agreement::Identical)
        .count();
    assert!(
        ties * 5 <= outcomes.len(),
        "{ties} of {} generations ended at numerical ties: too many to be ties",
        outcomes.len()
    );
    if ties > 0 {
        eprintln!(
            "note: {ties} of {} generations diverged at a numerical tie",
            outcomes.len()
        );
    }
}
