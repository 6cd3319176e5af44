//! RAM reclaim with a real llama-server under the supervisor (in-process, no network needed):
//! once the server loaded the model into its own buffers (`-lm none`, llama.cpp's no-mmap), the
//! agent drops the model file from the page cache; measured with `mincore` before and after.
//! The agent also logs the buffers llama-server reported, and its process-memory answer (what
//! `tightwad status` shows) puts the planner's prediction next to them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use tightwad_agent::config::{AgentConfig, Binaries, ProcessConfig};
use tightwad_agent::reclaim::ReclaimMode;
use tightwad_agent::supervisor::Supervisor;
use tightwad_placement::pagecache;
use tightwad_protocol::messages::{ProcessKind, ProcessState};

fn var(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) if !v.is_empty() => v.into(),
        _ => panic!("{name} is not set: run `eval \"$(scripts/setup)\"` first"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_drops_the_model_from_the_page_cache_after_a_no_mmap_load() {
    // A private copy on a disk-backed filesystem (not tmpfs, whose pages cannot be dropped), so
    // other tests' use of the shared model cannot keep its pages cached.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("dir");
    let model = dir.path().join("target.gguf");
    std::fs::copy(var("TIGHTWAD_MODELS").join("target.gguf"), &model).expect("copy model");
    std::fs::File::open(&model)
        .and_then(|f| f.sync_all())
        .expect("sync");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let args: Vec<String> = [
        "-m",
        &model.display().to_string(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "-c",
        "256",
        "-t",
        "1",
        "-np",
        "1",
        "-lm",
        "none",
        // This llama.cpp logs its buffer sizes at trace level only.
        "-lv",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let config = AgentConfig {
        state_dir: dir.path().join("state"),
        model_dirs: vec![dir.path().to_path_buf()],
        binaries: Binaries {
            llama_server: Some(var("LLAMA_SERVER")),
            ..Default::default()
        },
        processes: vec![ProcessConfig {
            name: "target".into(),
            kind: ProcessKind::LlamaServer,
            args,
            port: None,
            health_host: None,
            autostart: false,
            ready_timeout_s: Some(120),
            restart: Some(false),
        }],
        page_cache_reclaim: ReclaimMode::On,
        ..AgentConfig::default()
    };
    // Read the file in first, so it is certainly cached before the server starts.
    pagecache::prefetch(&model).expect("prefetch");
    let (cached, total) = pagecache::resident_bytes(&model).expect("mincore");
    assert!(
        cached > total / 2,
        "{cached} of {total} cached after a full read"
    );

    let supervisor = Supervisor::new(&config);
    let status = supervisor.start("target", None).await.expect("start");
    assert_eq!(status.state, ProcessState::Ready);
    let managed = supervisor.get("target").expect("managed");
    let mut line = None;
    for _ in 0..100 {
        line = managed
            .logs
            .tail(50)
            .into_iter()
            .map(|l| l.line)
            .find(|l| l.starts_with("page-cache reclaim"));
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = line.unwrap_or_else(|| {
        panic!(
            "no reclaim line in the supervisor log:\n{:#?}",
            managed.logs.tail(50)
        )
    });
    assert!(line.contains("cached before"), "{line}");
    assert!(line.contains("server RSS"), "{line}");
    // The agent also logs what llama-server allocated (the measured side of a plan).
    let measured = managed
        .logs
        .tail(4000)
        .into_iter()
        .map(|l| l.line)
        .find(|l| l.starts_with("measured buffers"))
        .unwrap_or_else(|| panic!("no measured-buffers line"));
    assert!(measured.contains("CPU "), "{measured}");
    // What `tightwad status` shows: the planner's prediction for this model and these flags
    // next to the measured buffers (all on the CPU here): within 5% or 2 MiB.
    let memory = tightwad_agent::memory::process_memory(&supervisor, "target")
        .await
        .expect("process memory");
    let cpu = |list: &[tightwad_protocol::messages::DeviceBytes]| {
        list.iter()
            .find(|d| d.device == "CPU")
            .map(|d| d.bytes)
            .unwrap_or_else(|| panic!("no CPU entry in {memory:?}"))
    };
    let (predicted, got) = (cpu(&memory.predicted), cpu(&memory.measured));
    assert!(
        predicted.abs_diff(got) <= (predicted / 20).max(2 << 20),
        "predicted {predicted}, measured {got}: {memory:?}"
    );
    assert!(memory.rss_bytes.unwrap_or(0) > 0, "{memory:?}");
    let (after, _) = pagecache::resident_bytes(&model).expect("mincore");
    assert!(
        after < total / 4,
        "{after} of {total} bytes still cached after reclaim: {line}"
    );
    supervisor.stop_all().await;
}
