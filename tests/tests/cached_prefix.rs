//! A user in a long conversation: every round of speculation used to send the whole context to
//! both servers. With the bundled patch 0006 a request names what a slot already holds
//! (`cached_prefix`: slot, token count, FNV-1a hash) and sends only the rest. The answers must be
//! those of the whole prompt, a slot that no longer holds the prefix must say so (404) and lose
//! nothing, and the proxy must then send the prompt whole and stay exact. Real servers.

use serde_json::{json, Value};
use tightwad_e2e::patched::{completion, start_target, timing, tokenize};
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, get_json, greedy_through_proxy_matches_target, post_json,
    prompts, proxy_token_ids, stock_env, LlamaServer, RunningProxy, ServerOptions,
};
use tightwad_serve::backend::llamacpp::{LlamaServer as Client, SlotMemory};
use tightwad_serve::backend::types::{DraftOptions, Role, TokenId};

const K: usize = 4;

/// What a conversation with history looks like: the same few hundred tokens before every turn.
fn preamble() -> String {
    (1..=24)
        .map(|i| {
            format!(
                "Note {i}: the ledger for shipment {} lists {} crates of apples. ",
                i * 37,
                i * 13 % 97
            )
        })
        .collect()
}

fn fnv1a(tokens: &[u64]) -> String {
    let ids: Vec<TokenId> = tokens.iter().map(|&t| t as TokenId).collect();
    format!("{:016x}", tightwad_serve::backend::llamacpp::fnv1a(&ids))
}

fn named(slot: u32, prefix: &[u64], rest: &[u64]) -> Value {
    json!({
        "prompt": rest, "id_slot": slot, "n_predict": 8, "temperature": 0, "n_probs": 3,
        "return_tokens": true, "cached_prefix": {"n_tokens": prefix.len(), "hash": fnv1a(prefix)},
    })
}

async fn post(server: &LlamaServer, body: &Value) -> (u16, Value) {
    post_json(&format!("{}/completion", server.url), body).await
}

#[tokio::test]
async fn a_request_naming_a_slots_prefix_gets_the_whole_prompts_answer_and_evaluates_only_the_rest()
{
    let server = start_target(2, 4096, &[]).await;
    let props: Value = get_json(&format!("{}/props", server.url)).await;
    assert_eq!(props["capabilities"]["cached_prefix"], true, "{props}");

    let context = tokenize(
        &server,
        &format!("{} Now answer: what is in shipment 74?", preamble()),
    )
    .await;
    assert!(context.len() > 300, "{}", context.len());
    // Slot 1 serves the context; its answer's first tokens are the next turn's new tokens.
    let first = completion(
        &server,
        json!({"prompt": context, "id_slot": 1, "n_predict": 8, "temperature": 0, "return_tokens": true}),
    )
    .await;
    let rest: Vec<u64> = first["tokens"].as_array().expect("tokens")[..3]
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let whole: Vec<u64> = context.iter().chain(&rest).copied().collect();

    // The same continuation named against slot 1, and sent whole: to slot 1 again (the same
    // cached tokens under it: the same numbers to the last bit) and to slot 0 without a cache
    // (the same tokens; other batch shapes round the probabilities differently).
    let by_name = completion(&server, named(1, &context, &rest)).await;
    let whole_to = |slot: u32, cache: bool| {
        let mut body = named(slot, &[], &whole);
        body["cache_prompt"] = json!(cache);
        body.as_object_mut()
            .expect("object")
            .remove("cached_prefix");
        body
    };
    let reference = completion(&server, whole_to(1, true)).await;
    assert_eq!(by_name["tokens"], reference["tokens"]);
    assert_eq!(
        by_name["completion_probabilities"],
        reference["completion_probabilities"]
    );
    let uncached = completion(&server, whole_to(0, false)).await;
    assert_eq!(by_name["tokens"], uncached["tokens"]);
    assert_eq!(by_name["tokens_evaluated"], whole.len(), "{by_name}");
    assert!(
        timing(&by_name, "prompt_n") <= rest.len() as u64,
        "{by_name}"
    );

    // A wrong hash, or more tokens than the slot holds: 404 with what to do, and the slot keeps
    // its cache (the next correct request evaluates only its own tokens again).
    let mut wrong = named(1, &context, &rest);
    wrong["cached_prefix"]["hash"] = json!("0123456789abcdef");
    let (status, v) = post(&server, &wrong).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not hold") && m.contains("send the whole prompt")),
        "{v}"
    );
    let mut too_long = named(1, &context, &rest);
    too_long["cached_prefix"]["n_tokens"] = json!(context.len() + 500);
    assert_eq!(post(&server, &too_long).await.0, 404);
    let again = completion(&server, named(1, &context, &rest)).await;
    assert_eq!(again["tokens"], reference["tokens"]);
    assert!(timing(&again, "prompt_n") <= rest.len() as u64, "{again}");

    // Malformed: a clear 400 naming the field, before anything runs.
    for (change, says) in [
        (json!({"id_slot": null}), "needs id_slot"),
        (json!({"prompt": "some text"}), "prompt of token ids"),
        (
            json!({"cached_prefix": {"n_tokens": 5, "hash": "xyz"}}),
            "16 hex digits",
        ),
        (json!({"cached_prefix": 7}), "must be an object"),
        (json!({"n_cmpl": 2}), "n_cmpl"),
    ] {
        let mut body = named(1, &context, &rest);
        for (k, v) in change.as_object().expect("object") {
            if v.is_null() {
                body.as_object_mut().expect("object").remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let (status, v) = post(&server, &body).await;
        assert_eq!(status, 400, "{change}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("cached_prefix") && m.contains(says)),
            "{change}: {v}"
        );
    }
}

/// Why the proxy checks `tokens_evaluated`: a stock llama-server does not know the field and
/// answers for the request's own tokens alone. A proxy that still believed in a patched build
/// there (swapped for a stock one since the last probe; set by hand here) must notice, throw
/// that answer away, and send the prompt whole from then on.
#[tokio::test]
async fn a_server_that_ignores_the_field_is_caught_and_sent_whole_prompts() {
    let env = stock_env();
    let stock = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let context: Vec<u64> = tokenize(&stock, &preamble()).await;
    let props: Value = get_json(&format!("{}/props", stock.url)).await;
    assert!(props["capabilities"]["cached_prefix"].is_null(), "{props}");
    let (status, v) = post(&stock, &named(0, &context[..200], &context[200..])).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["tokens_evaluated"],
        context.len() - 200,
        "stock ignores it: {v}"
    );

    let client =
        Client::new(Role::Draft, &stock.url, std::time::Duration::from_secs(30)).expect("client");
    let memory: &SlotMemory = client.slot_memory();
    memory.configure(true, 1);
    let ids: Vec<TokenId> = context.iter().map(|&t| t as TokenId).collect();
    memory.remember(0, &ids[..200]);
    let drafted = client
        .draft(&ids, 6, DraftOptions::default())
        .await
        .expect("draft");
    let reference = stock.reference(json!(context), 6).await;
    assert_eq!(
        drafted
            .tokens
            .iter()
            .map(|&t| u64::from(t))
            .collect::<Vec<_>>(),
        reference.tokens
    );
    assert_eq!(drafted.tokens_evaluated, Some(context.len() as u64));
    assert!(memory.stats().is_none(), "no more prefixes for this server");
    assert!(memory.lease(&ids).is_none());
}

async fn pairing() -> (LlamaServer, LlamaServer) {
    LlamaServer::target_and_draft(&env(), K, 2).await
}

fn prefix_stats(stats: &Value, server: &str) -> Value {
    let p = &stats["pairings"][0]["cached_prefix"];
    match server {
        "target" => p["target"].clone(),
        _ => p["drafters"][0].clone(),
    }
}

#[tokio::test]
async fn long_conversations_send_each_round_only_the_new_tokens_and_stay_exact() {
    let (target, draft) = pairing().await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let preamble = preamble();
    let prompts: Vec<String> = prompts()
        .into_iter()
        .take(30)
        .map(|p| format!("{preamble}{p}"))
        .collect();
    let outcomes = greedy_through_proxy_matches_target(&proxy, &target, &prompts, 24).await;
    assert_ties_are_rare(&outcomes);
    let stats = proxy.stats().await;
    let rounds = stats["pairings"][0]["rounds"].as_u64().unwrap_or(0);
    for server in ["target", "draft"] {
        let s = prefix_stats(&stats, server);
        let named = s["named"].as_u64().unwrap_or(0);
        // Every round but a request's first names the prefix (the first goes whole: no slot holds
        // the new turn's prompt yet); the preamble alone is ~400 tokens a round not sent.
        assert!(
            named + 2 * prompts.len() as u64 >= rounds,
            "{server}: {s} of {rounds} rounds"
        );
        assert!(
            s["tokens_not_sent"].as_u64().unwrap_or(0) > named * 300,
            "{server}: {s}"
        );
    }
}

#[tokio::test]
async fn another_client_taking_the_slot_costs_a_resend_not_exactness() {
    let (target, draft) = pairing().await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let prompt = format!("{}Once upon a time", preamble());
    let body =
        json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "return_token_ids": true});
    let (status, first) = proxy.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{first}");

    // Someone else's long request lands in every slot of the target (not through the proxy).
    let other = tokenize(
        &target,
        &format!("{} A different story.", preamble().repeat(2)),
    )
    .await;
    for slot in 0..ServerOptions::target(K as u32).slots {
        let v = completion(
            &target,
            json!({"prompt": other, "id_slot": slot, "n_predict": 2, "temperature": 0}),
        )
        .await;
        assert_eq!(v["id_slot"], slot, "{v}");
    }

    // The same conversation again: the proxy names the slot it remembers, the target answers
    // 404, the round goes again whole, and the answer is still the target's own.
    let (status, second) = proxy.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{second}");
    let reference = target.reference(json!(prompt), 24).await;
    assert_ties_are_rare(&[compare(&proxy_token_ids(&second), &reference, &prompt)]);
    assert_eq!(proxy_token_ids(&first), proxy_token_ids(&second));
    let s = prefix_stats(&proxy.stats().await, "target");
    assert!(s["misses"].as_u64().unwrap_or(0) >= 1, "{s}");
    assert!(
        s["named"].as_u64().unwrap_or(0) > s["misses"].as_u64().unwrap_or(0),
        "{s}"
    );
}

/// Several conversations at once: each names only a slot no other request of the proxy is using,
/// and every answer stays the target's own.
#[tokio::test]
async fn concurrent_long_conversations_each_keep_their_own_slot_and_stay_exact() {
    let (target, draft) = pairing().await;
    let proxy = RunningProxy::start(&target.url, Some(&draft.url), K).await;
    let preamble = preamble();
    let prompts: Vec<String> = prompts()
        .into_iter()
        .take(4)
        .map(|p| format!("{preamble}{p}"))
        .collect();
    let bodies: Vec<Value> = prompts
        .iter()
        .map(|p| json!({"prompt": p, "max_tokens": 32, "temperature": 0, "return_token_ids": true}))
        .collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|b| proxy.post("/v1/completions", b))).await;
    let mut outcomes = Vec::new();
    for (prompt, (status, v)) in prompts.iter().zip(&answers) {
        assert_eq!(*status, 200, "{v}");
        let reference = target.reference(json!(prompt), 32).await;
        outcomes.push(compare(&proxy_token_ids(v), &reference, prompt));
    }
    assert_ties_are_rare(&outcomes);
    let s = prefix_stats(&proxy.stats().await, "target");
    assert!(s["named"].as_u64().unwrap_or(0) > 0, "{s}");
}

/// A slot busy with someone else's long generation: a request naming it is turned away at once
/// (404, "busy") instead of waiting behind that generation, and the proxy would send it whole to
/// a free slot.
#[tokio::test]
async fn a_request_naming_a_busy_slot_is_turned_away_at_once() {
    let server = start_target(2, 4096, &[]).await;
    let context = tokenize(&server, &preamble()).await;
    completion(
        &server,
        json!({"prompt": context, "id_slot": 0, "n_predict": 1, "temperature": 0}),
    )
    .await;
    let long = {
        let url = server.url.clone();
        let body = json!({"prompt": [1, 2, 3], "id_slot": 0, "n_predict": 2000, "temperature": 0,
                          "ignore_eos": true, "cache_prompt": false});
        tokio::spawn(async move { post_json(&format!("{url}/completion"), &body).await })
    };
    // Wait until the long generation holds slot 0.
    let started = std::time::Instant::now();
    loop {
        let slots: Value = get_json(&format!("{}/slots", server.url)).await;
        if slots[0]["is_processing"] == true {
            break;
        }
        assert!(started.elapsed().as_secs() < 10, "{slots}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let asked = std::time::Instant::now();
    let (status, v) = post(&server, &named(0, &context, &[5, 6])).await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("slot 0 is busy")),
        "{v}"
    );
    assert!(
        !long.is_finished(),
        "answered while the generation still ran ({:?})",
        asked.elapsed()
    );
    long.abort();
}

/// `tightwad doctor` says whether each draft server takes cached prefixes, and on a stock build
/// what makes it so (the target's side is in the one-pass check).
#[tokio::test]
async fn doctor_says_whether_the_draft_server_takes_cached_prefixes() {
    use tightwad_coordinator::cluster::layout::Layout;
    use tightwad_coordinator::doctor::{live, Category, Status};
    let (target, patched) = pairing().await;
    let stock_env = stock_env();
    let stock = LlamaServer::start(
        &stock_env,
        &stock_env.model("draft.gguf"),
        ServerOptions::default(),
    )
    .await;
    let layout = Layout::parse(&format!(
        "[[pairings]]\nname = \"patched\"\ntarget = \"{}\"\ndraft = \"{}\"\n\n[[pairings]]\nname = \"stock\"\ntarget = \"{}\"\ndraft = \"{}\"\n",
        target.url, patched.url, target.url, stock.url
    ))
    .expect("layout");
    let checks = live::checks(&layout).await;
    let draft_check = |pairing: &str| {
        checks
            .iter()
            .find(|c| {
                c.category == Category::Build
                    && c.subject == format!("pairing {pairing} draft")
                    && c.message.contains("cached")
            })
            .unwrap_or_else(|| panic!("no draft build check for {pairing}: {checks:#?}"))
            .clone()
    };
    let p = draft_check("patched");
    assert_eq!(p.status, Status::Pass, "{p:?}");
    assert!(p.message.contains("cached prefixes"), "{p:?}");
    let s = draft_check("stock");
    assert_eq!(s.status, Status::Warn, "{s:?}");
    assert!(s.message.contains("predates `cached_prefix`"), "{s:?}");
    assert!(
        s.hint
            .as_deref()
            .unwrap_or_default()
            .contains("tightwad build"),
        "{s:?}"
    );
}
