//! `tightwad swap` under load and the multi-source model pull, against real agents in network
//! namespaces, a real llama-server and the real proxy.
//!
//! Root only (network namespaces).
//!
//! Lives in the harness crate, not beside the coordinator: it drives coordinator code against real
//! `tightwad-agent` processes (the agent binary) in network namespaces, which is what this crate
//! starts (a coordinator test using it would make a dev-dependency cycle).

use tightwad_e2e::agents::sha256_file;
use tightwad_e2e::cluster::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_coordinator::fleet;
use tightwad_serve::config::{PairingEntry, ProxyConfig};

const KEY: &str = "sk-swap-test";

/// One request of the load: when it started, when it ended, its text or its error.
type Outcome = (Instant, Instant, Result<String, String>);
const PROMPT: &str = "Once upon a time, in a lighthouse by the sea,";

async fn complete(http: &reqwest::Client, url: &str, stream: bool) -> Result<String, String> {
    let resp = http
        .post(format!("{url}/v1/completions"))
        .bearer_auth(KEY)
        .json(&json!({"model": "swap-test", "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": stream}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    if !stream {
        let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        return Ok(v["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string());
    }
    if body.contains("\"error\"") || !body.contains("[DONE]") {
        return Err(format!("broken stream: {body}"));
    }
    let mut text = String::new();
    for event in body.split("\n\n") {
        if let Some(v) = event
            .strip_prefix("data: ")
            .and_then(|e| serde_json::from_str::<Value>(e).ok())
        {
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
        }
    }
    Ok(text)
}

/// Wait (up to a minute) until `count` answers have come back for requests started after `since`
/// (any, with `None`); the load's clients record each as it ends.
fn wait_for_answers(results: &Mutex<Vec<Outcome>>, since: Option<Instant>, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answered = results
            .lock()
            .map(|all| {
                all.iter()
                    .filter(|(started, _, _)| since.is_none_or(|t| *started >= t))
                    .count()
            })
            .unwrap_or(0);
        if answered >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {answered} of {count} answers under load"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_swap_under_load_loses_no_request_and_later_requests_get_the_new_model() {
    let cluster = ClusterPlan::new()
        .host("gpu")
        .models(&["target.gguf", "draft.gguf"])
        .llama_server("target", "{models}/target.gguf", 8080, r#", "-np", "4""#)
        .start();
    cluster.start_process("gpu", "target");
    let target_url = format!("http://{}:8080", cluster.host("gpu").ns.ip);
    let rt = &cluster.rt;
    let mut entry = PairingEntry::new(target_url.clone(), None);
    entry.name = Some("swap-test".into());
    let config = ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        api_keys: vec![KEY.into()],
        pairings: vec![entry],
        ..ProxyConfig::default()
    };
    let (proxy_url, stop_proxy) = rt.block_on(async {
        let proxy = tightwad_serve::server::Proxy::bind(&config)
            .await
            .expect("proxy");
        let url = format!("http://{}", proxy.local_addr().expect("address"));
        proxy.probe().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = proxy
                .serve(async {
                    let _ = rx.await;
                })
                .await;
        });
        (url, tx)
    });
    let http = reqwest::Client::new();
    let old_text = rt
        .block_on(complete(&http, &proxy_url, false))
        .expect("a request before the swap");

    // Load: four clients, streamed and not, back to back until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<Outcome>>> = Default::default();
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, results, http, url) = (
            stop.clone(),
            results.clone(),
            http.clone(),
            proxy_url.clone(),
        );
        clients.push(rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let r = complete(&http, &url, i % 2 == 0).await;
                if let Ok(mut all) = results.lock() {
                    all.push((started, Instant::now(), r));
                }
            }
        }));
    }
    // The swap starts under load: every client has had an answer.
    wait_for_answers(&results, None, 4);
    let args = fleet::swap::SwapArgs {
        model: "draft.gguf".into(),
        process: "gpu/target".into(),
        pairing: Some("swap-test".into()),
        proxy: Some(proxy_url.clone()),
        api_key: Some(KEY.into()),
        drain_timeout: 60,
        json: false,
    };
    let fleet = cluster.fleet();
    let report = rt
        .block_on(fleet::swap::run(&fleet, &args, &cluster.config))
        .expect("swap");
    let swapped_at = Instant::now();
    eprint!("{}", fleet::swap::render(&report));
    assert!(report.new_model.ends_with("draft.gguf"), "{report:?}");
    assert!(
        report
            .old_model
            .as_deref()
            .is_some_and(|m| m.ends_with("target.gguf")),
        "{report:?}"
    );
    // The load goes on after it: answers to requests that started after the swap.
    wait_for_answers(&results, Some(swapped_at), 4);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        rt.block_on(c).expect("client task");
    }
    let new_text = rt
        .block_on(complete(&http, &proxy_url, false))
        .expect("a request after the swap");
    assert_ne!(
        old_text, new_text,
        "the two models answer alike: the test cannot tell them apart"
    );

    let all = results.lock().expect("results");
    let failed: Vec<&String> = all
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "requests lost during the swap: {failed:?}"
    );
    let (mut old, mut new) = (0, 0);
    for (started, _, r) in all.iter() {
        let text = r.as_ref().expect("checked");
        if *text == old_text {
            old += 1;
            assert!(
                *started < swapped_at,
                "a request started after the swap got the old model"
            );
        } else {
            assert_eq!(*text, new_text, "an answer from neither model");
            new += 1;
        }
    }
    eprintln!("{} requests: {old} before the swap, {new} after", all.len());
    assert!(old > 0 && new > 0, "old {old}, new {new}");

    // The agent runs the new model with the old arguments otherwise.
    let status = cluster.agent_status("gpu");
    let args = &status
        .processes
        .iter()
        .find(|p| p.name == "target")
        .expect("target")
        .args;
    assert!(args.iter().any(|a| a.ends_with("draft.gguf")), "{args:?}");
    assert!(args.iter().any(|a| a == "-np"), "{args:?}");

    // A swap to a model the host does not have changes nothing and says what to do.
    let missing = fleet::swap::SwapArgs {
        model: "nope.gguf".into(),
        ..args_clone(&args_template(&proxy_url))
    };
    let e = rt
        .block_on(fleet::swap::run(&fleet, &missing, &cluster.config))
        .unwrap_err();
    assert!(format!("{e:#}").contains("models copy"), "{e:#}");

    // A model that does not load: the old one is started again, the pairing resumes and keeps
    // answering with it.
    std::fs::write(
        cluster.host("gpu").models.join("broken.gguf"),
        b"GGUF not really",
    )
    .expect("write a broken model");
    let broken = fleet::swap::SwapArgs {
        model: "broken.gguf".into(),
        ..args_clone(&args_template(&proxy_url))
    };
    let e = rt
        .block_on(fleet::swap::run(&fleet, &broken, &cluster.config))
        .unwrap_err();
    eprintln!("broken swap: {e:#}");
    assert!(format!("{e:#}").contains("runs"), "{e:#}");
    assert_eq!(
        rt.block_on(complete(&http, &proxy_url, false))
            .expect("served after a failed swap"),
        new_text
    );

    // An RPC pool's coordinator has no pairing to drain: the same swap, without --pairing, by the
    // `tightwad` binary on a pipe: a plain line per step on stderr, the report on stdout.
    let swap = |process: &str, extra: &[&str]| {
        let out = std::process::Command::new(tightwad_e2e::test_env::workspace_binary(
            "tightwad",
            "TIGHTWAD_BIN",
        ))
        .arg("-c")
        .arg(&cluster.config)
        .args(["swap", "target.gguf", "--process", process])
        .args(extra)
        .output()
        .expect("tightwad swap runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let back = swap("gpu/target", &[]);
    let steps = String::from_utf8_lossy(&back.stderr);
    assert!(
        steps.contains("swap: [1/2] finding target.gguf on gpu\n")
            && steps.contains("swap: [2/2] restarting gpu/target with ")
            && steps.contains("swap: gpu/target runs "),
        "{steps}"
    );
    assert!(!steps.contains('\r'), "no spinner on a pipe: {steps:?}");
    let line = String::from_utf8_lossy(&back.stdout);
    assert!(
        line.starts_with("gpu/target: ")
            && line.contains("draft.gguf → ")
            && line.contains("target.gguf in"),
        "{line}"
    );
    // With --json: the report alone, no progress; the process named alone, its host found.
    let again = swap("target", &["--json"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report: Value = serde_json::from_slice(&again.stdout).expect("swap --json prints JSON");
    assert!(
        report["new_model"]
            .as_str()
            .is_some_and(|m| m.ends_with("target.gguf")),
        "{report}"
    );
    assert!(report["drain_ms"].is_null(), "{report}");
    assert_eq!(report["host"], "gpu", "{report}");
    let _ = stop_proxy.send(());
}

fn args_template(proxy: &str) -> fleet::swap::SwapArgs {
    fleet::swap::SwapArgs {
        model: String::new(),
        process: "gpu/target".into(),
        pairing: Some("swap-test".into()),
        proxy: Some(proxy.to_string()),
        api_key: Some(KEY.into()),
        drain_timeout: 60,
        json: false,
    }
}

fn args_clone(a: &fleet::swap::SwapArgs) -> fleet::swap::SwapArgs {
    fleet::swap::SwapArgs {
        model: a.model.clone(),
        process: a.process.clone(),
        pairing: a.pairing.clone(),
        proxy: a.proxy.clone(),
        api_key: a.api_key.clone(),
        drain_timeout: a.drain_timeout,
        json: a.json,
    }
}

const FILE: &str = "target.gguf";
/// Per source: three sources pull the 80 MB file in about 3 s; one source alone would take 10.
const RATE: u64 = 8 << 20;
const PIECE: u32 = 2 << 20;

fn pieces_done(models: &std::path::Path) -> usize {
    std::fs::read(models.join(format!(".{FILE}.part.pull.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| {
            v["done"]
                .as_array()
                .map(|d| d.iter().filter(|x| **x == true).count())
        })
        .unwrap_or(0)
}

#[test]
fn a_pull_from_three_sources_survives_a_killed_source_and_a_restarted_receiver() {
    let mut cluster = ClusterPlan::new()
        .host("src-a")
        .models(&[FILE])
        .host("src-b")
        .models(&[FILE])
        .host("src-c")
        .models(&[FILE])
        .host("dest")
        .start();
    let expected = sha256_file(&cluster.host("src-a").models.join(FILE));
    let dest_models = cluster.host("dest").models.clone();

    // 0. Only introduced peers may read pieces: a pull naming a source that never pinned the
    //    receiver is refused there, and nothing is written.
    {
        let fleet = cluster.fleet();
        let refused = cluster.rt.block_on(async {
            let src = fleet.config.host("src-a").expect("host").clone();
            let fingerprint = fleet
                .connect(&src)
                .await
                .expect("connect")
                .peer_fingerprint();
            let dest = fleet.config.host("dest").expect("host").clone();
            let mut stream = fleet
                .connect(&dest)
                .await
                .expect("connect")
                .open(&tightwad_protocol::messages::Request::PullModel {
                    file_name: FILE.into(),
                    sources: vec![tightwad_protocol::messages::PeerAddress {
                        name: src.name.clone(),
                        address: src.address.clone(),
                        fingerprint,
                    }],
                    piece_bytes: Some(PIECE),
                    max_bytes_per_second: None,
                })
                .await
                .expect("request");
            loop {
                match stream.next_reply().await {
                    Ok(Some(tightwad_protocol::messages::Reply::Progress(_))) => continue,
                    other => break other,
                }
            }
        });
        let e = refused.expect_err("a source that never pinned the receiver served it");
        eprintln!("unintroduced pull refused: {e}");
        assert!(e.to_string().contains("no source could serve"), "{e}");
        assert!(!dest_models.join(FILE).exists());
        assert_eq!(pieces_done(&dest_models), 0);
    }
    let sources: Vec<String> = ["src-a", "src-b", "src-c"].map(String::from).to_vec();

    // 1. The receiver dies mid-pull; started again, the pull resumes with the pieces it had.
    let dest_i = cluster
        .hosts
        .iter()
        .position(|h| h.name == "dest")
        .expect("dest");
    let src_c = cluster
        .hosts
        .iter()
        .position(|h| h.name == "src-c")
        .expect("src-c");
    let mut dest_child = cluster.hosts[dest_i]
        .agent
        .child
        .take()
        .expect("dest agent");
    {
        let fleet = cluster.fleet();
        let first = fleet::pull(&fleet, FILE, &sources, "dest", PIECE, Some(RATE), |_| {});
        let watch = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while pieces_done(&dest_models) < 8 {
                assert!(Instant::now() < deadline, "the pull never got going");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = dest_child.kill();
            let _ = dest_child.wait();
        };
        let (r, ()) = cluster.rt.block_on(async { tokio::join!(first, watch) });
        let e = r.expect_err("the pull cannot finish with its receiver killed");
        eprintln!("first pull failed as it must: {e:#}");
    }
    let had = pieces_done(&dest_models);
    assert!(had >= 8, "{had} pieces recorded");
    assert!(
        !dest_models.join(FILE).exists(),
        "a final file before verification"
    );
    let restarted = tightwad_e2e::agents::AgentProcess::start(tightwad_e2e::agents::AgentSpec {
        ns: &cluster.hosts[dest_i].ns,
        state_dir: cluster.hosts[dest_i].agent.state_dir.clone(),
        models: dest_models.clone(),
        join: None,
        extra_toml: String::new(),
    });
    cluster.hosts[dest_i].agent = restarted;

    // 2. Pull again from all three and kill one source part-way: the others take its pieces.
    let mut c_child = cluster.hosts[src_c]
        .agent
        .child
        .take()
        .expect("src-c agent");
    let fleet = cluster.fleet();
    let pull = fleet::pull(&fleet, FILE, &sources, "dest", PIECE, Some(RATE), |_| {});
    let kill_at = had + 6;
    let (summary, ()) = cluster.rt.block_on(async {
        let kill = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while pieces_done(&dest_models) < kill_at {
                assert!(Instant::now() < deadline, "the second pull never got going");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = c_child.kill();
            let _ = c_child.wait();
        };
        tokio::join!(pull, kill)
    });
    let summary = summary.expect("the pull completes");
    eprintln!("{summary:#?}");
    assert_eq!(summary.transfer.sha256, expected);
    assert_eq!(sha256_file(&dest_models.join(FILE)), expected);
    assert!(summary.pieces_resumed as usize >= had, "{summary:?}");
    assert!(
        !dest_models.join(format!(".{FILE}.part")).exists()
            && !dest_models.join(format!(".{FILE}.part.pull.json")).exists(),
        "leftovers of the pull"
    );
    let by = |n: &str| {
        summary
            .sources
            .iter()
            .find(|s| s.name == n)
            .expect("source")
            .clone()
    };
    let (a, b, c) = (by("src-a"), by("src-b"), by("src-c"));
    assert!(c.error.is_some(), "src-c was not cut off mid-way: {c:?}");
    assert!(a.pieces > 0 && b.pieces > 0, "{a:?} {b:?}");
    assert_eq!(
        a.pieces + b.pieces + c.pieces + summary.pieces_resumed,
        summary.pieces,
        "pieces fetched twice or not at all"
    );
}
