//! What a right answer is: the prompts, the target's own greedy answer to each (the reference),
//! and the judgement of an answer against it (allowing only the documented numerical ties).

use serde_json::{json, Value};

/// Below this top-two log-probability gap the target's own choice is a numerical tie (batched and
/// one-token decoding run different kernels); the same rule as the exactness tests.
pub const TIE_MARGIN: f64 = 0.05;

/// The prompts requests cycle through: prose, code, lists, other scripts, a long one.
pub fn prompts() -> Vec<String> {
    let mut prompts: Vec<String> = [
        "Once upon a time",
        "The capital of France is",
        "def quicksort(arr):",
        "1, 2, 3, 4, 5,",
        "Dear Sir or Madam,",
        "Ingredients:\n- 2 eggs\n-",
        "Q: What is the speed of light?\nA:",
        "东京の天気は",
        "Москва — столица",
        "#include <stdio.h>\nint main() {",
        "SELECT name FROM users WHERE",
        "🙂 emoji test:",
        "<html><body><h1>",
        "JSON: {\"name\": \"Ada\", \"age\":",
        "The history of lighthouses",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut long = String::from("A long prompt: ");
    for i in 0..40 {
        long.push_str(&format!("sentence {i} talks about lighthouses and tides. "));
    }
    prompts.push(long);
    prompts
}

/// The target alone: greedy tokens and, per position, the top-two gap and the runner-up.
#[derive(Debug, Clone)]
pub struct Reference {
    pub prompt: String,
    pub tokens: Vec<u64>,
    pub margins: Vec<f64>,
    pub runner_up: Vec<u64>,
}

/// Ask the target itself (fresh prompt evaluation, no cache) what it generates for `prompt`.
pub async fn reference(
    client: &reqwest::Client,
    target_url: &str,
    prompt: &str,
    max_tokens: usize,
) -> Result<Reference, String> {
    let body = json!({
        "prompt": prompt, "n_predict": max_tokens, "temperature": 0, "n_probs": 2,
        "return_tokens": true, "cache_prompt": false,
    });
    let reply: Value = client
        .post(format!("{target_url}/completion"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("reference request: {e}"))?
        .json()
        .await
        .map_err(|e| format!("reference reply: {e}"))?;
    let tokens: Vec<u64> = reply["tokens"]
        .as_array()
        .ok_or_else(|| format!("no tokens in the reference reply: {reply}"))?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let mut margins = Vec::new();
    let mut runner_up = Vec::new();
    for position in reply["completion_probabilities"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let top = position["top_logprobs"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let logprob = |i: usize| {
            top.get(i)
                .and_then(|c| c["logprob"].as_f64())
                .unwrap_or(f64::NEG_INFINITY)
        };
        margins.push(logprob(0) - logprob(1));
        runner_up.push(
            top.get(1)
                .and_then(|c| c["id"].as_u64())
                .unwrap_or(u64::MAX),
        );
    }
    Ok(Reference {
        prompt: prompt.to_string(),
        tokens,
        margins,
        runner_up,
    })
}

/// How one response compared with the target alone.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Token for token the target's own output (or, direct phase: complete).
    Identical,
    /// Identical up to a numerical tie where the proxy took the target's runner-up.
    Tie,
    /// A different token where the target was not at a tie: an exactness failure.
    Wrong(String),
    /// Not a complete answer: an HTTP error, an error event, no `[DONE]`, a broken stream.
    Incomplete(String),
}

pub fn judge(tokens: &[u64], reference: &Reference) -> Verdict {
    match tokens
        .iter()
        .zip(&reference.tokens)
        .position(|(a, b)| a != b)
    {
        None if tokens.len() == reference.tokens.len() => Verdict::Identical,
        None => Verdict::Wrong(format!(
            "{} tokens where the target alone gave {} ({:?})",
            tokens.len(),
            reference.tokens.len(),
            reference.prompt
        )),
        Some(i) => {
            let margin = reference.margins.get(i).copied().unwrap_or(f64::INFINITY);
            if margin < TIE_MARGIN && reference.runner_up.get(i) == Some(&tokens[i]) {
                Verdict::Tie
            } else {
                Verdict::Wrong(format!(
                    "token {i}: {} instead of the target's {} (top-two margin {margin:.3}) ({:?})",
                    tokens[i], reference.tokens[i], reference.prompt
                ))
            }
        }
    }
}
