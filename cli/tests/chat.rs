//! `tightwad chat` as a person uses it: through a real pseudo-terminal (util-linux `script`)
//! against a real proxy process and real llama-servers, with the speculation figures after each
//! reply, and `--direct` to the target alone; then `logs proxy` showing and following the proxy's
//! own log, and `bench` against the same pair.
//!
//! Binaries and models come from `eval "$(scripts/setup)"` (LLAMA_SERVER, TIGHTWAD_MODELS); a
//! missing variable fails the test, never skips it.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const QUESTION: &str = "Write a short poem about the sea.";

#[tokio::test(flavor = "multi_thread")]
async fn chat_in_a_terminal_shows_the_targets_reply_and_the_speculation_figures() {
    let sandbox = Sandbox::new("chat");
    let dir = &sandbox.dir;
    let (_target, target_url) = llama_server(dir, "target.gguf", 6, 16384).await;
    let (_draft, draft_url) = llama_server(dir, "draft.gguf", 1, 4096).await;
    let proxy_port = free_port();
    let config = sandbox.config(
        "tightwad.toml",
        &format!(
            "listen = \"127.0.0.1:{proxy_port}\"\n\n[[pairings]]\nname = \"sea\"\ntarget = \"{target_url}\"\ndraft = \"{draft_url}\"\ndraft_tokens = 4\nadaptive = false\n"
        ),
    );
    let config_arg = config.to_string_lossy().to_string();
    let proxy_log = dir.join("proxy.log");
    let mut proxy = Running(
        Command::new(BIN)
            .args(["-c", &config_arg, "proxy"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&proxy_log).expect("log"))
            .spawn()
            .expect("proxy starts"),
    );
    let proxy_url = format!("http://127.0.0.1:{proxy_port}");
    wait_healthy(&proxy_url, &mut proxy, &proxy_log).await;

    // What the target alone says: the reply chat must show, through the proxy and directly.
    let expected: Value = reqwest::Client::new()
        .post(format!("{target_url}/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24, "temperature": 0}))
        .send()
        .await
        .expect("target answers")
        .json()
        .await
        .expect("json");
    let expected = expected["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .trim()
        .to_string();
    assert!(!expected.is_empty());

    // Through the proxy; `/exit` leaves.
    let mut chat = in_pty(&["-c", &config_arg, "chat", "--max-tokens", "24"]);
    let output = collect(chat.stdout.take().expect("stdout"));
    let mut input = chat.stdin.take().expect("stdin");
    wait_for(&output, "> ", 30);
    writeln!(input, "{QUESTION}").expect("type");
    let shown = wait_for(&output, "tokens/round", 180);
    writeln!(input, "/exit").expect("type");
    let status = wait_exit(&mut chat, 30);
    eprintln!("{shown}");
    assert!(status.success(), "{status}: {shown}");
    assert!(
        shown.contains(&expected),
        "expected {expected:?} in:\n{shown}"
    );
    let figures = shown
        .lines()
        .find(|l| l.contains("tokens/round"))
        .expect("figures line");
    let number_before = |word: &str| -> u64 {
        let at = figures
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {figures}"));
        figures[..at]
            .trim_end()
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number before {word} in {figures}"))
    };
    assert!(number_before(" rounds") > 0, "{figures}");
    assert!(number_before(" drafted") > 0, "{figures}");
    assert!(number_before(" tokens,") > 0, "{figures}");
    assert!(figures.contains("tok/s"), "{figures}");

    // Straight to the target; end of input (Ctrl-D) leaves.
    let mut direct = in_pty(&["-c", &config_arg, "chat", "--direct", "--max-tokens", "24"]);
    let output = collect(direct.stdout.take().expect("stdout"));
    let mut input = direct.stdin.take().expect("stdin");
    wait_for(&output, "> ", 30);
    writeln!(input, "{QUESTION}").expect("type");
    let shown = wait_for(&output, "direct, no speculation", 180);
    drop(input);
    let status = wait_exit(&mut direct, 30);
    assert!(status.success(), "{status}: {shown}");
    assert!(
        shown.contains(&expected),
        "expected {expected:?} in:\n{shown}"
    );

    // The proxy's own log, as JSON lines: the chat's generation is there.
    let logs = Command::new(BIN)
        .args(["-c", &config_arg, "logs", "proxy", "--json", "-n", "2000"])
        .output()
        .expect("logs runs");
    assert!(
        logs.status.success(),
        "{}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["line"].as_str().is_some_and(|t| t.contains("rounds="))),
        "{lines:?}"
    );

    // Followed live: a request made after `logs proxy -f -n 0` started shows up in it, and
    // nothing logged before it started does. Nothing tells when its first poll has marked where
    // the log stood (a request before that is history, rightly not shown), so the request is
    // repeated until one shows up.
    let history_seq = lines
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .expect("the log so far has lines");
    let mut follow = Running(
        Command::new(BIN)
            .args([
                "-c",
                &config_arg,
                "logs",
                "proxy",
                "-f",
                "-n",
                "0",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("logs -f runs"),
    );
    let followed = collect(follow.0.stdout.take().expect("stdout"));
    let shown = |what: &str| followed.lock().map(|t| t.contains(what)).unwrap_or(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !shown("rounds=") {
        assert!(Instant::now() < deadline, "no request showed up in logs -f");
        let status = reqwest::Client::new()
            .post(format!("{proxy_url}/v1/completions"))
            .json(&json!({"model": "sea", "prompt": "The sea", "max_tokens": 8}))
            .send()
            .await
            .expect("proxy answers")
            .status();
        assert!(status.is_success());
        // `-f` polls every second: a request after its first poll shows up within about that.
        let shown_by = Instant::now() + Duration::from_secs(5);
        while !shown("rounds=") && Instant::now() < shown_by {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let followed_text = followed.lock().map(|t| t.clone()).unwrap_or_default();
    // Whole lines only (the last may still be being written).
    let whole = &followed_text[..followed_text.rfind('\n').map_or(0, |i| i + 1)];
    let followed_lines: Vec<Value> = whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        followed_lines
            .iter()
            .all(|l| l["seq"].as_u64() > Some(history_seq)),
        "-n 0 printed history (lines up to seq {history_seq}): {followed_lines:?}"
    );
    assert!(
        follow.0.try_wait().ok().flatten().is_none(),
        "-f keeps running"
    );

    // bench: per-prompt progress lines on stderr (a pipe, so no bar), the table on stdout, the
    // JSON report in the --out file; with `--json` alone the report is stdout and stderr stays
    // quiet. The old `--json FILE` still writes the file, and says to write `--json --out FILE`.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "The sea is\nOnce upon a time\n").expect("prompts");
    let bench = |output: &[&str]| {
        let out = Command::new(BIN)
            .args([
                "bench",
                "--proxy",
                &proxy_url,
                "--target",
                &target_url,
                "--model",
                "sea",
            ])
            .args(["--max-tokens", "8", "--warmup", "0"])
            .args(output)
            .arg("--prompts")
            .arg(&prompts)
            .output()
            .expect("bench runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let report_file = dir.join("bench.json");
    let report_path = report_file.to_string_lossy().to_string();
    let table = bench(&["--json", "--out", &report_path]);
    let progress = String::from_utf8_lossy(&table.stderr);
    assert!(
        progress.contains(": 1/2") && progress.contains(": 2/2"),
        "{progress}"
    );
    assert!(!progress.contains("warning"), "{progress}");
    assert!(String::from_utf8_lossy(&table.stdout).contains("speedup"));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    let piped = bench(&["--json"]);
    let report: Value = serde_json::from_slice(&piped.stdout).expect("bench --json prints JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    let quiet = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !quiet.contains("1/2") && !quiet.contains("2/2") && !quiet.contains("warning: `"),
        "no progress with --json: {quiet}"
    );
    std::fs::remove_file(&report_file).expect("remove the report");
    let old = bench(&["--json", &report_path]);
    let stderr = String::from_utf8_lossy(&old.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: `tightwad bench --json {report_path}` is deprecated; use `--json --out {report_path}`"
        )),
        "{stderr}"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON");
    assert_eq!(report["prompts"].as_array().map(Vec::len), Some(2));
    sandbox.remove();
}
