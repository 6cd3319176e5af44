//! Helpers for the tests of the bundled llama.cpp patches (`patches/llama.cpp/`) against real,
//! patched llama-servers: a target started as those tests need it, and the native endpoints'
//! requests they make over and over.

use serde_json::{json, Value};

use crate::{env, post_json, LlamaServer, Reference, ServerOptions};

/// Draft length of the single-step checks.
pub const K: usize = 6;

/// The longest client draft the test servers accept (`--spec-draft-n-max`, default 3).
pub const DRAFT_MAX: &str = "8";

/// A patched target on the generated `target.gguf` that takes client drafts up to [`DRAFT_MAX`]
/// tokens; `extra` adds llama-server flags (a draft model of its own, say).
pub async fn start_target(slots: u32, ctx: u32, extra: &[&str]) -> LlamaServer {
    let env = env();
    let mut args = vec!["--spec-draft-n-max", DRAFT_MAX];
    args.extend(extra);
    let opts = ServerOptions {
        slots,
        ctx,
        extra: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    LlamaServer::start(&env, &env.model("target.gguf"), opts).await
}

/// The prompt's token ids as the server itself tokenizes it (special tokens added).
pub async fn tokenize(server: &LlamaServer, text: &str) -> Vec<u64> {
    let (status, v) = post_json(
        &format!("{}/tokenize", server.url),
        &json!({"content": text, "add_special": true}),
    )
    .await;
    assert_eq!(status, 200, "tokenize: {v}");
    v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}

/// A `/completion` that must succeed (the failing reply and the request in the message).
pub async fn completion(server: &LlamaServer, body: Value) -> Value {
    let (status, v) = post_json(&format!("{}/completion", server.url), &body).await;
    assert_eq!(status, 200, "completion failed: {v}\nrequest: {body}");
    v
}

/// A whole-number figure of the reply's `timings`, 0 when absent.
pub fn timing(v: &Value, name: &str) -> u64 {
    // llama-server leaves draft_n out when nothing was drafted.
    v["timings"][name].as_u64().unwrap_or(0)
}

/// One speculative step: verify `draft` after `prompt`, greedy unless `extra` says otherwise.
pub async fn step(server: &LlamaServer, prompt: &[u64], draft: &[u64], extra: Value) -> Value {
    completion(server, step_body(prompt, draft, extra)).await
}

/// The `/completion` body of [`step`] (a test that streams the step sends it with `stream`).
pub fn step_body(prompt: &[u64], draft: &[u64], extra: Value) -> Value {
    let mut body = json!({
        "prompt": prompt, "draft_tokens": draft, "temperature": 0, "return_tokens": true,
        "cache_prompt": true, "n_predict": 256,
    });
    crate::merge(&mut body, extra);
    body
}

/// The first `n` positions of a reference.
pub fn prefix(r: &Reference, n: usize) -> Reference {
    let mut r = r.clone();
    r.tokens.truncate(n);
    r.margins.truncate(n);
    r.runner_up.truncate(n);
    r
}

/// A token that is not `t` (and a plain one: not a control token at the bottom of the vocabulary):
/// what a draft holds where it is wrong.
pub fn wrong(t: u64) -> u64 {
    if t == 1000 {
        1001
    } else {
        1000
    }
}

/// `text`'s prompt tokens and the target's own greedy continuation of [`K`] + 1 tokens (a whole
/// draft of K and the token after it), which must not end early.
pub async fn prompt_and_reference(target: &LlamaServer, text: &str) -> (Vec<u64>, Reference) {
    let prompt = tokenize(target, text).await;
    let reference = target.reference(json!(prompt), K + 1).await;
    assert_eq!(
        reference.tokens.len(),
        K + 1,
        "{text}: the target stopped early"
    );
    assert_ne!(reference.stop_type, "eos", "{text}");
    (prompt, reference)
}
