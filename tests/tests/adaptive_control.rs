//! The default every user runs: the adaptive controller on the proxy's own rounds (a draft
//! llama-server proposes, the patched target verifies each proposal in one pass), against a real
//! target whose speed changes under it. Slow (SIMULATED: the `slow_target` relay makes each of the
//! target's forward passes cost 80 ms more, like a big model on modest hardware), speculation pays:
//! it stays on and drafts more tokens per round than it started with. Fast again (the relay's cost
//! set to zero), it loses: the controller notices when it re-times the target alone and switches
//! it off. Slow once more: after its back-off the controller probes, measures that speculation pays
//! again and switches it back on. Every decision is read from the proxy's own stats and decision
//! timeline, and every answer on the way is compared token by token with the target alone.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::slow_target::SlowTarget;
use tightwad_e2e::{
    assert_ties_are_rare, compare, env, get_json, prompts, proxy_token_ids, Agreement, LlamaServer,
    RunningProxy, ServerOptions,
};

/// What each of the slow target's forward passes costs on top of its own time.
const SLOW: Duration = Duration::from_millis(80);
/// The largest draft the controller may choose (`draft_tokens`); it starts at 4.
const K_CAP: usize = 8;
const MAX_TOKENS: usize = 48;

/// A user of a pairing whose target can be made slow or fast, and everything the answers showed.
struct Story {
    target: LlamaServer,
    _draft: LlamaServer,
    slow: SlowTarget,
    proxy: RunningProxy,
    prompts: Vec<String>,
    asked: usize,
    outcomes: Vec<Agreement>,
}

impl Story {
    async fn start() -> Story {
        let env = env();
        let target = LlamaServer::start(
            &env,
            &env.model("target.gguf"),
            ServerOptions::target(K_CAP as u32),
        )
        .await;
        let draft =
            LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
        let slow = SlowTarget::start(&target.url, SLOW).await;
        let mut entry = RunningProxy::entry(&slow.url, Some(&draft.url), K_CAP);
        // What every user runs (the harness pins it off for the exactness tests).
        entry.adaptive = true;
        // Drafts run to k (no confidence stop), so an answer's drafted tokens show k.
        entry.draft_p_min = 0.0;
        let proxy = RunningProxy::start_entry(entry).await;
        Story {
            target,
            _draft: draft,
            slow,
            proxy,
            // The long prompt last in the set is left out: it only makes each round slower.
            prompts: prompts().into_iter().take(29).collect(),
            asked: 0,
            outcomes: Vec::new(),
        }
    }

    /// One greedy completion through the proxy, compared token by token with the target alone;
    /// its `tightwad` object. (`return_token_ids` keeps every request in the engine: while
    /// speculation is off, each one then re-times the target instead of one in eight.)
    async fn ask(&mut self) -> Value {
        let prompt = self.prompts[self.asked % self.prompts.len()].clone();
        self.asked += 1;
        let (status, through) = self
            .proxy
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "return_token_ids": true}),
            )
            .await;
        assert_eq!(status, 200, "{through}");
        let reference = self.target.reference(json!(prompt), MAX_TOKENS).await;
        self.outcomes
            .push(compare(&proxy_token_ids(&through), &reference, &prompt));
        let t = &through["tightwad"];
        eprintln!(
            "request {}: {} rounds {} drafted {} accepted {} in {} ms",
            self.asked, t["served_by"], t["rounds"], t["drafted"], t["accepted"], t["elapsed_ms"]
        );
        t.clone()
    }

    async fn controller(&self) -> Value {
        self.proxy.stats().await["pairings"][0]["controller"].clone()
    }

    /// The controller's decisions so far, oldest first (the dashboard's timeline).
    async fn decisions(&self) -> Vec<(String, String)> {
        let v: Value = get_json(&format!("{}/v1/tightwad/dashboard", self.proxy.url)).await;
        v["pairings"][0]["timeline"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|d| {
                let field = |k: &str| d[k].as_str().unwrap_or_default().to_string();
                (field("state"), field("reason"))
            })
            .collect()
    }

    /// Keep using the pairing until the controller's view and the last answer's `tightwad`
    /// object satisfy `done` (checked after every answer); panics with the stats and decisions if
    /// `limit` passes first.
    async fn ask_until(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&Value, &Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let answer = self.ask().await;
            let controller = self.controller().await;
            if done(&controller, &answer) {
                eprintln!("{what}: after {} requests: {controller}", self.asked);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {limit:?} ({} requests): {controller}\ndecisions: {:?}",
                self.asked,
                self.decisions().await
            );
        }
    }
}

fn state(controller: &Value) -> &str {
    controller["mode"]["state"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_follows_the_targets_speed_on_off_and_on_again_and_output_stays_the_targets() {
    let mut story = Story::start().await;

    // A slow target: speculation pays, stays on, and the controller drafts more than the 4 tokens
    // it starts with.
    let start_k = story.controller().await["k"].as_u64();
    assert_eq!(start_k, Some(4), "the controller starts at k = 4");
    // (An answer's rounds drafting more than 4 tokens on average show the larger k in effect.)
    story
        .ask_until(
            "k grew on the slow target",
            Duration::from_secs(180),
            |c, a| {
                let rounds = a["rounds"].as_u64().unwrap_or(0);
                state(c) == "on"
                    && c["k"].as_u64() > Some(4)
                    && a["served_by"] == "speculative"
                    && a["drafted"].as_u64() > Some(4 * rounds)
            },
        )
        .await;
    let controller = story.controller().await;
    assert!(
        controller["predicted_speedup"].as_f64() > Some(1.0),
        "{controller}"
    );
    assert!(
        controller["speculative_goodput_tok_s"].as_f64() > controller["target_tok_s"].as_f64(),
        "speculation delivered more than the slow target alone: {controller}"
    );
    let decisions = story.decisions().await;
    assert!(
        decisions.iter().all(|(s, _)| s != "off"),
        "switched off on a slow target: {decisions:?}"
    );

    // The target becomes fast: speculation loses. The controller re-times the target alone every
    // 120 s while speculating (TARGET_SPEED_REFRESH), then switches speculation off.
    story.slow.set_per_pass(Duration::ZERO);
    story
        .ask_until(
            "off on the fast target",
            Duration::from_secs(300),
            |c, _| state(c) == "off",
        )
        .await;
    let controller = story.controller().await;
    let reason = controller["last_decision"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("the target alone") || reason.contains("below 1"),
        "the decision says what it measured: {controller}"
    );
    let answer = story.ask().await;
    assert_eq!(answer["served_by"], "target_only", "{answer}");
    assert_eq!(answer["drafted"], 0, "{answer}");

    // Slow again: after the back-off (15 s, doubled after a failed probe) the controller probes,
    // measures that speculation pays, and switches it back on.
    story.slow.set_per_pass(SLOW);
    let off_decisions = story.decisions().await.len();
    story
        .ask_until("back on after a probe", Duration::from_secs(240), |c, _| {
            state(c) == "on"
        })
        .await;
    let decisions = story.decisions().await;
    let since_off: Vec<&str> = decisions[off_decisions - 1..]
        .iter()
        .map(|(s, _)| s.as_str())
        .collect();
    assert_eq!(since_off.first(), Some(&"off"), "{decisions:?}");
    assert_eq!(
        since_off[since_off.len() - 2..],
        ["probing", "on"],
        "a probe, then on: {decisions:?}"
    );
    let (_, on_reason) = decisions.last().expect("a decision");
    assert!(on_reason.contains("probe delivered"), "{decisions:?}");
    let answer = story.ask().await;
    assert_eq!(answer["served_by"], "speculative", "{answer}");
    assert!(answer["drafted"].as_u64() > Some(0), "{answer}");

    eprintln!("{} answers, decisions: {decisions:?}", story.outcomes.len());
    assert_ties_are_rare(&story.outcomes);
}
