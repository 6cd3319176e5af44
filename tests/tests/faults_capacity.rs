//! A target started with a small context (`-c`): near the end of it, the target cannot hold the
//! context plus the draft tokens it is asked to verify (the patched llama-server refuses a one-pass
//! verification whose prompt and draft exceed its slot's context). The engine must then finish that
//! answer with the target alone, token for token what the target alone says, and the proxy's log
//! (`tightwad logs proxy`) must say why and what to change.
//!
//! The proxy here is the real `tightwad proxy` binary (its log ring is set up by the binary), with
//! a real target and draft llama-server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tightwad_e2e::test_env::{free_port, workspace_binary};
use tightwad_e2e::{compare, env, post_json, proxy_token_ids, LlamaServer, ServerOptions};

/// The target's whole context: small enough that answers run into its end.
const TARGET_CTX: u32 = 256;
const K: u32 = 4;

fn tightwad_bin() -> PathBuf {
    workspace_binary("tightwad", "TIGHTWAD_BIN")
}

/// `tightwad proxy` as an operator runs it: a `tightwad.toml` in its folder (which `tightwad logs
/// proxy` reads too, for the proxy's address).
struct ProxyProcess {
    child: Child,
    url: String,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    async fn start(target: &str, draft: &str) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        std::fs::write(
            dir.path().join("tightwad.toml"),
            format!(
                "listen = \"127.0.0.1:{port}\"\n\n[[pairings]]\nname = \"tightwad-test\"\ntarget = \"{target}\"\ndraft = \"{draft}\"\ndraft_tokens = {K}\ndraft_p_min = 0\nadaptive = false\nverify = \"one-pass\"\n"
            ),
        )
        .expect("config written");
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log file");
        let child = Command::new(tightwad_bin())
            .current_dir(dir.path())
            .arg("proxy")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tightwad proxy starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{url}/health")).await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "tightwad proxy not ready in 60 s: {}",
                std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ProxyProcess { child, url, dir }
    }

    /// `tightwad logs proxy --json` in the config's folder: the proxy's log lines numbered above
    /// `after`.
    fn log_after(&self, after: u64) -> Vec<(u64, String)> {
        let out = Command::new(tightwad_bin())
            .current_dir(self.dir.path())
            .args(["logs", "proxy", "--json", "-n", "2000"])
            .output()
            .expect("tightwad logs runs");
        assert!(
            out.status.success(),
            "tightwad logs proxy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| Some((v["seq"].as_u64()?, v["line"].as_str()?.to_string())))
            .filter(|(seq, _)| *seq > after)
            .collect()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the operator reads when a request could not be verified for lack of context.
fn says_why(line: &str) -> bool {
    line.contains("continuing this request target-only")
        && line.contains("cannot hold")
        && line.contains("start it with a larger -c")
}

#[tokio::test]
async fn answers_that_run_into_a_small_target_context_finish_on_the_target_alone_exactly_and_the_log_says_raise_c(
) {
    let env = env();
    let target = LlamaServer::start(
        &env,
        &env.model("target.gguf"),
        ServerOptions {
            ctx: TARGET_CTX,
            ..ServerOptions::target(K)
        },
    )
    .await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let proxy = ProxyProcess::start(&target.url, &draft.url).await;

    // A long document, as token ids (BOS first), cut so that each request leaves the target
    // exactly `room` tokens of context for its answer.
    let text = (0..40)
        .map(|i| format!("Entry {i}: the lighthouse keeper logged the tide, the wind and ships. "))
        .collect::<String>();
    let (status, tokenized) = post_json(
        &format!("{}/tokenize", target.url),
        &json!({"content": text, "add_special": true}),
    )
    .await;
    assert_eq!(status, 200, "{tokenized}");
    let document: Vec<u64> = tokenized["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(
        document.len() > TARGET_CTX as usize,
        "the document is too short"
    );

    let mut seen = 0;
    // room 3 and 5: the very first round cannot fit (context + k draft tokens + 2 > 256; drafts
    // run to k, `draft_p_min = 0`), so the reason is certain; room 150: a long answer that
    // speculates for many rounds first.
    for room in [3usize, 5, 150] {
        let prompt = &document[..TARGET_CTX as usize - room];
        // The client asks for more than fits: the target alone stops at the end of its context.
        let reference = target.reference(json!(prompt), 400).await;
        assert_eq!(
            reference.tokens.len(),
            room,
            "the target alone should fill its context"
        );
        let (status, through) = post_json(
            &format!("{}/v1/completions", proxy.url),
            &json!({"model": "tightwad-test", "prompt": prompt, "max_tokens": 400,
                    "temperature": 0, "return_token_ids": true}),
        )
        .await;
        assert_eq!(status, 200, "room {room}: {through}");
        assert_eq!(
            through["tightwad"]["served_by"], "speculative",
            "room {room}: {through}"
        );
        compare(
            &proxy_token_ids(&through),
            &reference,
            &format!("room {room}"),
        );
        assert_eq!(through["choices"][0]["finish_reason"], "length");
        assert_eq!(through["usage"]["completion_tokens"], room);

        let lines = proxy.log_after(seen);
        seen = lines.iter().map(|l| l.0).max().unwrap_or(seen);
        let why = lines.iter().find(|(_, l)| says_why(l));
        if room <= K as usize + 1 {
            let (_, line) = why.unwrap_or_else(|| {
                panic!("room {room}: the log does not say why the request continued target-only: {lines:#?}")
            });
            // The reason names the real numbers: this context, at the first round.
            assert!(
                line.contains(&format!("this {}-token context", prompt.len())),
                "{line}"
            );
        } else {
            // The long answer really speculated before the context ran out.
            assert!(
                through["tightwad"]["rounds"].as_u64() > Some(5),
                "room {room}: hardly speculated: {through}"
            );
            eprintln!(
                "room {room}: {} rounds; the context's end {} the drafts",
                through["tightwad"]["rounds"],
                if why.is_some() {
                    "also stopped"
                } else {
                    "did not stop"
                }
            );
        }
    }
}
