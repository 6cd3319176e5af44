//! The prompts `tightwad bench` measures: a built-in set of every kind of text, or a file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::BenchError;

/// One prompt of the set, with the kind of text it asks for (acceptance depends on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchPrompt {
    pub category: String,
    pub prompt: String,
}

impl BenchPrompt {
    pub(super) fn new(category: &str, prompt: &str) -> Self {
        BenchPrompt {
            category: category.to_string(),
            prompt: prompt.to_string(),
        }
    }
}

/// The built-in set: the field report's kinds of prompt (factual, code, creative, reasoning,
/// list), two of each.
pub fn builtin_prompts() -> Vec<BenchPrompt> {
    vec![
        BenchPrompt::new("factual", "What is the capital of France, and what river runs through it?"),
        BenchPrompt::new("factual", "Explain in a few sentences how a refrigerator keeps food cold."),
        BenchPrompt::new("code", "Write a Python function that returns the n-th Fibonacci number iteratively."),
        BenchPrompt::new("code", "Write a Rust function that reverses the words of a sentence."),
        BenchPrompt::new("creative", "Write a short poem about a lighthouse keeper at dawn."),
        BenchPrompt::new("creative", "Begin a story about a cat who finds a key in the garden."),
        BenchPrompt::new("reasoning", "If a train leaves at 3 pm and travels 120 km at 80 km/h, when does it arrive? Explain step by step."),
        BenchPrompt::new("reasoning", "A farmer has 17 sheep and all but 9 run away. How many are left? Think it through."),
        BenchPrompt::new("list", "List ten common fruits, one per line."),
        BenchPrompt::new("list", "List the planets of the solar system in order from the sun."),
    ]
}

/// Read a prompt file (see [`BenchArgs::prompts`]).
pub fn load_prompts(path: &Path) -> Result<Vec<BenchPrompt>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Prompts {
        path: path.display().to_string(),
        detail: source.to_string(),
    })?;
    let prompts = parse_prompts(&text).map_err(|detail| BenchError::Prompts {
        path: path.display().to_string(),
        detail,
    })?;
    if prompts.is_empty() {
        return Err(BenchError::Prompts {
            path: path.display().to_string(),
            detail: "no prompts in the file".into(),
        });
    }
    Ok(prompts)
}

pub(super) fn parse_prompts(text: &str) -> Result<Vec<BenchPrompt>, String> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text)
            .map_err(|e| format!("not a JSON list of {{\"category\", \"prompt\"}}: {e}"));
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| BenchPrompt::new("custom", l))
        .collect())
}
