//! Draft and target must tokenize identically, or no draft token can ever be checked against the
//! target's. From the GGUF metadata, before anything runs: tokenizer type, vocabulary size,
//! special tokens, and the fingerprint of the whole token list. (With the servers running,
//! `live` also tokenizes a probe set on both.)

use serde_json::json;
use tightwad_protocol::messages::GgufSummary;

use super::agents::Cluster;
use super::report::{Category, Check, Status};
use crate::cluster::layout::{Layout, Role};

/// The metadata fields on which `draft` differs from `target`, as `field: target vs draft`.
pub fn differences(target: &GgufSummary, draft: &GgufSummary) -> Vec<String> {
    let mut out = Vec::new();
    let mut compare = |field: &str, t: Option<String>, d: Option<String>| {
        if t != d {
            out.push(format!(
                "{field}: {} vs {}",
                t.unwrap_or_else(|| "none".into()),
                d.unwrap_or_else(|| "none".into())
            ));
        }
    };
    compare(
        "tokenizer",
        target.tokenizer_model.clone(),
        draft.tokenizer_model.clone(),
    );
    compare(
        "vocabulary size",
        target.vocab_size.map(|v| v.to_string()),
        draft.vocab_size.map(|v| v.to_string()),
    );
    compare(
        "BOS id",
        target.bos_token_id.map(|v| v.to_string()),
        draft.bos_token_id.map(|v| v.to_string()),
    );
    compare(
        "EOS id",
        target.eos_token_id.map(|v| v.to_string()),
        draft.eos_token_id.map(|v| v.to_string()),
    );
    let short = |f: &Option<String>| f.as_deref().map(|f| prefix(f, 12));
    compare(
        "token list fingerprint",
        short(&target.vocab_fingerprint),
        short(&draft.vocab_fingerprint),
    );
    out
}

fn check_pair(
    subject: String,
    target: Option<&GgufSummary>,
    draft: Option<&GgufSummary>,
    hint: &str,
) -> Check {
    match (target, draft) {
        (Some(t), Some(d)) => {
            let diffs = differences(t, d);
            if diffs.is_empty() {
                Check::new(
                    Category::Vocabulary,
                    subject,
                    Status::Pass,
                    format!(
                        "same vocabulary ({} tokenizer, {} tokens, fingerprint {})",
                        t.tokenizer_model.as_deref().unwrap_or("?"),
                        t.vocab_size.unwrap_or(0),
                        t.vocab_fingerprint
                            .as_deref()
                            .map(|f| prefix(f, 12))
                            .unwrap_or_else(|| "?".into())
                    ),
                )
            } else {
                Check::new(
                    Category::Vocabulary,
                    subject,
                    Status::Fail,
                    format!("draft and target vocabularies differ: {}", diffs.join("; ")),
                )
                .hint(hint.to_string())
                .details(json!({ "differences": diffs }))
            }
        }
        _ => Check::new(
            Category::Vocabulary,
            subject,
            Status::Skip,
            "model metadata unavailable (see the model checks)",
        ),
    }
}

pub fn metadata_checks(cluster: &Cluster, layout: &Layout) -> Vec<Check> {
    let hint = "pick a draft of the same model family (same tokenizer): `tightwad models list` shows each file's vocabulary fingerprint; `tightwad init` proposes matching pairs";
    let mut checks = Vec::new();
    for (index, pairing) in layout.pairings.iter().enumerate() {
        let name = pairing.display_name(index);
        let (Some(t), Some(d)) = (
            layout.process_for(&name, Role::Target),
            layout.process_for(&name, Role::Draft),
        ) else {
            continue;
        };
        let target = cluster.main_model(&t).and_then(|m| m.gguf.as_ref());
        let draft = cluster.main_model(&d).and_then(|m| m.gguf.as_ref());
        checks.push(check_pair(format!("pairing {name}"), target, draft, hint));
    }
    for native in &layout.native_pairings {
        let target = cluster
            .main_model(&native.target)
            .and_then(|m| m.gguf.as_ref());
        let draft = cluster
            .draft_model(&native.target)
            .and_then(|m| m.gguf.as_ref());
        checks.push(check_pair(
            format!("native {}", native.name),
            target,
            draft,
            hint,
        ));
    }
    checks
}

/// The first `n` characters (a peer's strings need not be ASCII: never slice bytes).
pub fn prefix(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}
