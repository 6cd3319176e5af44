//! `tightwad tune MODEL --load`: the real binary pre-reads the model, starts a real llama-server
//! with `-lm none` (no mmap), waits for /health, drops the file from the page cache (measured
//! with `mincore` here, after its report), and stops the server on Ctrl-C (SIGINT). On a pipe its
//! progress is plain lines on stderr: the pre-read by tenths, then each step.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tightwad_placement::pagecache;

#[test]
fn load_prereads_starts_waits_and_reclaims() {
    let models = std::env::var_os("TIGHTWAD_MODELS")
        .filter(|v| !v.is_empty())
        .expect("TIGHTWAD_MODELS is not set: run `eval \"$(scripts/setup)\"` first");
    let server = std::env::var_os("LLAMA_SERVER")
        .filter(|v| !v.is_empty())
        .expect("LLAMA_SERVER is not set: run `eval \"$(scripts/setup)\"` first");
    // A private copy on a disk-backed filesystem, so its page cache is this test's alone.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let model = dir.path().join("target.gguf");
    std::fs::copy(std::path::Path::new(&models).join("target.gguf"), &model).expect("copy");
    std::fs::File::open(&model)
        .and_then(|f| f.sync_all())
        .expect("sync");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tightwad"))
        .args(["tune"])
        .arg(&model)
        .args(["--load", "--port", &port.to_string(), "--timeout", "120"])
        .args([
            "--",
            "--host",
            "127.0.0.1",
            "-c",
            "256",
            "-t",
            "1",
            "-np",
            "1",
            "-lm",
            "none",
        ])
        .env("LLAMA_SERVER", &server)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tightwad");
    // stderr carries tightwad's progress and llama-server's own log: keep all of it.
    let stderr = child.stderr.take().expect("stderr");
    let progress = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = progress.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut all) = collected.lock() {
                all.push_str(&line);
                all.push('\n');
            }
        }
    });
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let reclaimed = loop {
        match rx.recv_timeout(Duration::from_secs(150)) {
            Ok(line) if line.starts_with("reclaimed:") => break line,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no reclaim report; output:\n{}", seen.join("\n"));
            }
        }
    };
    assert!(seen.iter().any(|l| l.starts_with("pre-read ")), "{seen:?}");
    assert!(
        seen.iter().any(|l| l.starts_with("ready after")),
        "{seen:?}"
    );
    assert!(reclaimed.contains("cached before"), "{reclaimed}");
    let wanted = [
        "tune --load: reading ",
        "100% (",
        "tune --load: [1/2] starting ",
        "tune --load: [2/2] dropping the model file from the page cache",
        "tune --load: loaded in ",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = progress.lock().map(|t| t.clone()).unwrap_or_default();
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "progress lines missing on stderr:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after, total) = pagecache::resident_bytes(&model).expect("mincore");
    assert!(
        after < total / 4,
        "{after} of {total} still cached: {reclaimed}"
    );
    // Ctrl-C stops the server and tightwad.
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    for _ in 0..100 {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("tightwad did not exit after SIGINT");
}
