//! Native pairing the way a user deploys it: two hosts (network namespaces) run agents; `tightwad
//! up` starts the draft host's rpc-server and the target host's llama-server with the draft model
//! on that rpc-server (`-md … --rpc`); the `tightwad proxy` binary fronts the target with
//! `native = true`. Greedy answers through the proxy are the target alone's, token for token, on
//! many prompts; the target's own speculation drafts while the proxy lets it, and drafts nothing
//! (its `speculative.n_max` 0) while an operator has the proxy switch speculation off.

use serde_json::{json, Value};
use tightwad_e2e::cluster::{ClusterPlan, TestCluster};
use tightwad_e2e::llama_server::{metric_at, reference_at};
use tightwad_e2e::proxy_process::ProxyProcess;
use tightwad_e2e::{assert_ties_are_rare, compare, prompts, proxy_token_ids, Reference};

const MAX_TOKENS: usize = 32;
/// The target's own counter of tokens its draft proposed (llama-server `--metrics`).
const DRAFTED_COUNTER: &str = "llamacpp:spec_decode_num_draft_tokens_total";

/// Twelve short prompts of every kind and the long one (several hundred tokens).
fn checked_prompts() -> Vec<String> {
    let all = prompts();
    let mut picked: Vec<String> = all.iter().take(12).cloned().collect();
    picked.extend(all.last().cloned());
    picked
}

#[test]
fn native_pairing_started_by_tightwad_up_behind_the_proxy_is_the_target_alone() {
    // The target reports its own drafting (`--metrics`). Speculation pinned on (`adaptive =
    // false`): on these CPUs the controller may rightly switch native speculation off, and this
    // test is about what it does while on.
    let cluster = ClusterPlan::native_pairing(r#", "--metrics""#, "adaptive = false\n").start();
    let target_url = format!("http://{}:8080", cluster.host("alpha").ns.ip);
    let beta_rpc = format!("{}:50052", cluster.host("beta").ns.ip);
    let checked = checked_prompts();

    // The target alone (its configured arguments, no draft model), started by its agent: the
    // answers everything below must equal.
    cluster.start_process("alpha", "target");
    let references: Vec<Reference> = cluster.rt.block_on(async {
        let mut all = Vec::new();
        for prompt in &checked {
            all.push(reference_at(&target_url, json!(prompt), MAX_TOKENS).await);
        }
        all
    });
    let (_, stopped) = tightwad(&cluster, &["agent", "stop", "alpha", "target", "--json"]);
    assert_eq!(stopped["state"], "stopped", "{stopped}");

    // `tightwad up native`: beta's rpc-server, then alpha's llama-server with the draft model on it.
    let (text, started) = tightwad(&cluster, &["up", "native", "--json"]);
    let outcome = started
        .as_array()
        .and_then(|all| all.iter().find(|o| o["name"] == "native"))
        .unwrap_or_else(|| panic!("`up --json` did not report the native pairing: {text}"));
    assert_eq!(outcome["process"], "alpha/target", "{text}");
    assert_eq!(outcome["state"], "ready", "{text}");
    let target_args = outcome["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    assert!(
        target_args.contains(&format!("--rpc {beta_rpc}")) && target_args.contains("-md "),
        "the target runs its draft on beta's rpc-server: {target_args}"
    );

    cluster.rt.block_on(async {
        let proxy = ProxyProcess::start(&cluster.config, cluster.lab.path("proxy").join("log")).await;
        let ask = |prompt: String| {
            let proxy = &proxy;
            async move {
                let (status, v) = proxy
                    .post(
                        "/v1/completions",
                        &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}),
                    )
                    .await;
                assert_eq!(status, 200, "{v}\n{}", proxy.log_text());
                v
            }
        };

        // Speculation on: every answer speculated by the target itself, and the target alone's.
        let mut outcomes = Vec::new();
        let (mut drafted, mut accepted) = (0, 0);
        let counter_before = metric_at(&target_url, DRAFTED_COUNTER).await;
        for (prompt, reference) in checked.iter().zip(&references) {
            let v = ask(prompt.clone()).await;
            assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
            drafted += v["tightwad"]["drafted"].as_u64().unwrap_or(0);
            accepted += v["tightwad"]["accepted"].as_u64().unwrap_or(0);
            outcomes.push(compare(&proxy_token_ids(&v), reference, prompt));
        }
        assert_ties_are_rare(&outcomes);
        let counter_after = metric_at(&target_url, DRAFTED_COUNTER).await;
        assert!(drafted > 0, "the target's own speculation never drafted");
        assert!(accepted > 0, "nothing the remote draft proposed was accepted");
        assert_eq!(
            counter_after - counter_before,
            drafted as f64,
            "the answers report what the target's own counter counted"
        );
        let stats = proxy.stats().await;
        assert_eq!(stats["pairings"][0]["native_steering"], "steered", "{stats}");

        // An operator switches speculation off (the dashboard's control): the proxy sends the
        // target `speculative.n_max` 0, and its own counter shows nothing drafted.
        let (status, v) = proxy
            .post("/v1/tightwad/pairings/native/speculation", &json!({"mode": "off"}))
            .await;
        assert_eq!(status, 200, "{v}");
        let counter_before = metric_at(&target_url, DRAFTED_COUNTER).await;
        let mut outcomes = Vec::new();
        for (prompt, reference) in checked.iter().zip(&references).take(4) {
            let v = ask(prompt.clone()).await;
            assert_eq!(v["tightwad"]["served_by"], "target_only", "{v}");
            assert_eq!(v["tightwad"]["drafted"], 0, "{v}");
            outcomes.push(compare(&proxy_token_ids(&v), reference, prompt));
        }
        assert_ties_are_rare(&outcomes);
        assert_eq!(
            metric_at(&target_url, DRAFTED_COUNTER).await,
            counter_before,
            "the target drafted while the proxy had speculation off"
        );

        // Back to the configured behaviour: the target drafts again.
        let (status, v) = proxy
            .post("/v1/tightwad/pairings/native/speculation", &json!({"mode": "auto"}))
            .await;
        assert_eq!(status, 200, "{v}");
        let v = ask(checked[0].clone()).await;
        assert_eq!(v["tightwad"]["served_by"], "speculative", "{v}");
        assert!(v["tightwad"]["drafted"].as_u64() > Some(0), "{v}");
        assert_ties_are_rare(&[compare(&proxy_token_ids(&v), &references[0], &checked[0])]);
    });
}

/// `tightwad -c CONFIG ARGS…` (the binary), which must succeed: its stdout, and that as JSON.
fn tightwad(cluster: &TestCluster, args: &[&str]) -> (String, Value) {
    let out = cluster.tightwad(args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "tightwad {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tightwad {args:?} printed no JSON ({e}):\n{text}"));
    (text, value)
}
