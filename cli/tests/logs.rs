//! What the binaries log, as an operator reads it: `tightwad proxy` with its target down answers at
//! once and says why in plain lines (or JSON lines with `--log-format json`), and the agent takes
//! `--log-format json` too.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// `tightwad proxy` with its target down, stderr piped: it answers at once (before: silent for
/// 10 s while it probed), the warning names the cause at the URL and the fix, the log has no
/// colour codes, and `--log-format json` writes one JSON object a line.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_with_its_target_down_serves_at_once_and_says_why_in_plain_logs() {
    let dir = scratch("down");
    for json in [false, true] {
        let port = free_port();
        let dead = format!("http://127.0.0.1:{}", free_port());
        let mut args = vec![
            "proxy".to_string(),
            "--target".into(),
            dead.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if json {
            args.extend(["--log-format".into(), "json".into()]);
        }
        let log = dir.join(format!("proxy-{json}.log"));
        let started = Instant::now();
        let _proxy = Running(
            Command::new(BIN)
                .args(&args)
                .current_dir(&dir)
                .env_remove("RUST_LOG")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("proxy starts"),
        );
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}");
        loop {
            if let Ok(r) = http.get(format!("{url}/live")).send().await {
                assert_eq!(r.status(), 200);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the proxy did not answer within 3 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r = http
            .get(format!("{url}/health"))
            .send()
            .await
            .expect("health");
        assert_eq!(r.status(), 503);
        let deadline = Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("connection refused") || Instant::now() > deadline {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            text.contains(&format!("connection refused at {dead}"))
                && text.contains("llama-server"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "colour codes in a piped log: {text:?}"
        );
        if json {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            }
        }
    }
}

/// The agent takes `--log-format json` too.
#[test]
fn the_agent_logs_json_lines_when_asked() {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join("debug/tightwad-agent");
    let agent = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("debug/tightwad-agent"))
        .filter(|p| p.exists())
        .unwrap_or(agent);
    assert!(agent.exists(), "build the agent first: {}", agent.display());
    let dir = scratch("agent-json");
    let port = free_port();
    let mut child = Command::new(&agent)
        .args([
            "--state-dir",
            &dir.display().to_string(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let err = collect(child.stderr.take().expect("stderr"));
    let text = wait_for(&err, "\"level\"", 20);
    let _ = child.kill();
    let _ = child.wait();
    // Whole lines only (the last may still be being written).
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let lines: Vec<&str> = whole.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{text}");
    for line in lines {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
