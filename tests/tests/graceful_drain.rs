//! An operator restarts the service (systemd sends SIGTERM) while answers are streaming: the
//! answers in flight finish, word for word the target's, new connections are refused at once,
//! and the process then exits cleanly — nobody's reply is cut in half by a deploy.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tightwad_e2e::{
    compare, env, free_port, stream_token_ids, Agreement, LlamaServer, OpenStream, ServerOptions,
};

/// The `tightwad` binary cargo built beside this test (`target/<profile>/tightwad`).
fn tightwad_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("tightwad"))
        .filter(|p| p.exists())
        .expect("target/<profile>/tightwad missing: cargo build -p tightwad")
}

/// Terminates the proxy however the test ends.
struct ProxyProcess(std::process::Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = reqwest::get(format!("{url}/v1/models")).await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the proxy at {url} did not become ready");
}

#[tokio::test]
async fn sigterm_lets_streams_in_flight_finish_refuses_new_ones_and_exits_cleanly() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(4)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(tightwad_binary())
        .args([
            "proxy",
            "--target",
            &target.url,
            "--draft",
            &draft.url,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--draft-tokens",
            "4",
            "--no-adaptive",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tightwad proxy starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut proxy = ProxyProcess(child);
    wait_ready(&url).await;

    let prompts = ["The history of lighthouses", "def parse_config(path):"];
    let mut references = Vec::new();
    for p in prompts {
        references.push(target.reference(json!(p), 200).await);
    }

    // Two answers streaming when the signal comes.
    let mut streams = Vec::new();
    for p in prompts {
        streams.push(
            OpenStream::start(
                &format!("{url}/v1/completions"),
                &json!({"prompt": p, "max_tokens": 200, "temperature": 0, "stream": true, "return_token_ids": true}),
                2,
            )
            .await,
        );
    }
    // What systemd's `systemctl stop` sends.
    let killed = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "SIGTERM delivered");

    // New connections are refused from now on (the listener closes at the signal).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = reqwest::Client::new()
            .get(format!("{url}/v1/models"))
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if fresh.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts new requests 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert!(
        proxy.0.try_wait().expect("wait on the proxy").is_none(),
        "the proxy exited while answers were still streaming"
    );

    // The answers in flight run to their end, identical to the target's own.
    for (stream, (prompt, reference)) in streams.into_iter().zip(prompts.iter().zip(&references)) {
        let body = stream.finish().await;
        assert!(
            body.trim_end().ends_with("data: [DONE]"),
            "stream for {prompt:?} was cut: {body}"
        );
        assert!(!body.contains("\"error\""), "{body}");
        let outcome = compare(&stream_token_ids(&body), reference, prompt);
        assert_ne!(outcome, Agreement::TieAt(0), "{prompt:?}");
    }

    // Then the process exits by itself, successfully.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = proxy.0.try_wait().expect("wait on the proxy") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after its streams finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = log.join().unwrap_or_default();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("finishing in-flight requests"),
        "the log says why it is stopping:\n{log}"
    );
}
