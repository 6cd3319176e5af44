//! `tightwad build` end to end: two agents in network namespaces build llama.cpp from the same
//! source tarball (the llama.cpp tree vendored in the llama-cpp-python sdist that scripts/setup
//! uses; CPU backend), uploaded by the coordinator over the peer protocol. Both report the same
//! build identity, switch their supervised llama-server over while a steady stream of requests
//! goes through a tightwad proxy without one failing, and roll back. A deliberately broken
//! source fails the smoke test and leaves the old build serving.
//!
//! The requests go through the proxy because that is how clients reach the servers: the proxy
//! rides out the seconds a target is restarting (connection refused, or 503 while the model
//! loads), and the agent restarts a server only once it has no request in progress. A client
//! talking to llama-server directly would see the restart.
//!
//! Speed: scripts/setup builds llama.cpp with ccache, with the same flags and the same build
//! folder shape as an agent, so these builds are nearly all cache hits (mostly linking).
//!
//! Lives in the harness crate, not beside the coordinator: it drives coordinator code against real
//! `tightwad-agent` processes (the agent binary) in network namespaces, which is what this crate
//! starts (a coordinator test using it would make a dev-dependency cycle).

use tightwad_e2e::cluster::*;
use tightwad_e2e::get_json;
use tightwad_e2e::test_env::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tightwad_coordinator::fleet::build::{run_on_hosts, BuildPlan, HostResult, SourceSpec};
use tightwad_protocol::messages::{
    BuildBackend, BuildProgress, BuildStage, ProcessKind, ProcessState,
};

/// One request through the proxy: when it started and ended, and its failure if any.
struct Sent {
    start: Instant,
    end: Instant,
    failure: Option<String>,
}

/// The tarball with `tools/server/main.cpp` patched so llama-server exits as soon as it is asked
/// to load a model (`--version` and `--help` still work): it compiles, and fails the smoke test.
fn broken_tarball(sdist: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("broken");
    std::fs::create_dir_all(&tree).expect("mkdir");
    let ok = std::process::Command::new("tar")
        .args(["-xzf"])
        .arg(sdist)
        .arg("-C")
        .arg(&tree)
        .args(["--strip-components=1"])
        .status()
        .expect("tar");
    assert!(ok.success(), "unpacking {}", sdist.display());
    let main = tree.join("vendor/llama.cpp/tools/server/main.cpp");
    assert!(main.is_file(), "{} missing", main.display());
    std::fs::write(
        &main,
        "#include <cstdio>\n#include <cstring>\nint llama_server(int argc, char ** argv);\nint main(int argc, char ** argv) {\n    for (int i = 1; i < argc; i++) {\n        if (std::strcmp(argv[i], \"-m\") == 0) {\n            std::fprintf(stderr, \"deliberately broken build (tightwad test)\\n\");\n            return 3;\n        }\n    }\n    return llama_server(argc, argv);\n}\n",
    )
    .expect("patch main.cpp");
    // Only the llama.cpp tree: the agent finds it at the top as well as in vendor/.
    let out = dir.join("llama.cpp-broken.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("-C")
        .arg(tree.join("vendor"))
        .args(["-I", "gzip -1", "-cf"])
        .arg(&out)
        .arg("llama.cpp")
        .status()
        .expect("tar");
    assert!(ok.success(), "packing the broken tree");
    let _ = std::fs::remove_dir_all(&tree);
    out
}

struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    /// Wait (up to `limit`) until as many requests sent after `since` have been answered (or
    /// failed) as there are request loops.
    fn wait_for_answers_after(&self, since: Instant, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let answered = self
                .log
                .lock()
                .map(|log| log.iter().filter(|s| s.start >= since).count())
                .unwrap_or(0);
            if answered >= self.tasks.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {answered} requests answered since {since:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One sequential request loop per model, until stopped (and at most 30 minutes).
fn start_traffic(
    rt: &tokio::runtime::Runtime,
    proxy: std::net::SocketAddr,
    models: &[&str],
) -> Traffic {
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("http client");
    let tasks = models
        .iter()
        .map(|model| {
            let (stop, log, http, model) =
                (stop.clone(), log.clone(), http.clone(), model.to_string());
            rt.spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(1800);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let start = Instant::now();
                    let reply = http
                        .post(format!("http://{proxy}/v1/completions"))
                        .json(&serde_json::json!({
                            "model": model,
                            "prompt": "Once upon a time",
                            "max_tokens": 8,
                            "temperature": 0,
                        }))
                        .send()
                        .await;
                    let failure = match reply {
                        Ok(resp) => {
                            let status = resp.status();
                            let body: serde_json::Value = resp.json().await.unwrap_or_default();
                            let text = body["choices"][0]["text"].as_str();
                            if status.is_success() && text.is_some() {
                                None
                            } else {
                                Some(format!("{model}: {status} {body}"))
                            }
                        }
                        Err(e) => Some(format!("{model}: {e}")),
                    };
                    if let Ok(mut log) = log.lock() {
                        log.push(Sent {
                            start,
                            end: Instant::now(),
                            failure,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    Traffic { stop, log, tasks }
}

/// Records when each host's switch stage began (from the progress reports).
#[derive(Default)]
struct Stages {
    switch_began: Mutex<Vec<(String, Instant)>>,
    lines: Mutex<Vec<String>>,
}

impl Stages {
    fn observer(&self) -> impl Fn(&str, &BuildProgress) + Sync + '_ {
        move |host: &str, p: &BuildProgress| {
            if p.stage == BuildStage::Switch {
                if let Ok(mut began) = self.switch_began.lock() {
                    if !began.iter().any(|(h, _)| h == host) {
                        began.push((host.to_string(), Instant::now()));
                    }
                }
            }
            if p.stage != BuildStage::Compile || p.done == p.total {
                eprintln!(
                    "[{host}] {:?} {}/{} {}",
                    p.stage, p.done, p.total, p.message
                );
            }
            if let Ok(mut lines) = self.lines.lock() {
                lines.push(format!("{host} {:?} {}", p.stage, p.message));
            }
        }
    }
}

/// Asserts a request was in flight (or just sent) while each host restarted its server.
fn assert_traffic_spanned(traffic: &Traffic, stages: &Stages, ended: Instant, what: &str) {
    let log = traffic.log.lock().expect("log");
    for (host, began) in stages.switch_began.lock().expect("stages").iter() {
        let during = log
            .iter()
            .filter(|s| s.start <= ended && s.end >= *began)
            .count();
        assert!(
            during > 0,
            "{what}: no request overlapped {host}'s switch; the test proves nothing"
        );
    }
}

/// (pid, state, llama-server binary path, its reported backend) of the host's `srv`.
fn srv(
    cluster: &TestCluster,
    host: &str,
) -> (Option<u32>, ProcessState, String, Option<BuildBackend>) {
    let status = cluster.agent_status(host);
    let process = status
        .processes
        .iter()
        .find(|p| p.name == "srv")
        .expect("srv process");
    let binary = status
        .inventory
        .binaries
        .iter()
        .find(|b| b.kind == ProcessKind::LlamaServer)
        .expect("llama-server binary");
    (
        process.pid,
        process.state,
        binary.path.clone(),
        binary.build.as_ref().and_then(|b| b.backend),
    )
}

fn describe(results: &[HostResult]) -> String {
    serde_json::to_string_pretty(results).unwrap_or_default()
}

#[test]
fn two_agents_build_one_llama_cpp_switch_without_dropping_requests_and_roll_back() {
    let (sdist, build) = llama_build_source();
    let configured = require_env("LLAMA_SERVER");
    let mut plan = ClusterPlan::new();
    for host in ["alpha", "beta"] {
        plan = plan
            .host(host)
            .models(&["target.gguf"])
            .agent_toml(&build)
            .llama_server("srv", "{models}/target.gguf", 8080, ", \"-np\", \"2\"");
    }
    let cluster = plan.start();
    cluster.start_process("alpha", "srv");
    cluster.start_process("beta", "srv");
    let fleet = cluster.fleet();
    let hosts = fleet.config.hosts.clone();

    // A proxy with one model per host, and a steady stream of requests through it.
    let mut config = tightwad_serve::config::ProxyConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Default::default()
    };
    for host in &cluster.hosts {
        let mut entry =
            tightwad_serve::config::PairingEntry::new(format!("http://{}:8080", host.ns.ip), None);
        entry.name = Some(host.name.clone());
        config.pairings.push(entry);
    }
    let proxy = cluster
        .rt
        .block_on(tightwad_serve::server::Proxy::bind(&config))
        .expect("proxy");
    let proxy_addr = proxy.local_addr().expect("proxy address");
    let (stop_proxy, proxy_stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy_task = cluster.rt.spawn(proxy.serve(async {
        let _ = proxy_stopped.await;
    }));
    let traffic = start_traffic(&cluster.rt, proxy_addr, &["alpha", "beta"]);

    let before: Vec<_> = ["alpha", "beta"].map(|h| srv(&cluster, h)).into();
    for (pid, state, path, _) in &before {
        assert_eq!(*state, ProcessState::Ready);
        assert!(pid.is_some());
        assert_eq!(path, &configured, "starts on the configured binary");
    }

    // 1. Both hosts build the same tarball and switch.
    let stages = Stages::default();
    let results = cluster
        .rt
        .block_on(run_on_hosts(
            &fleet,
            &hosts,
            &BuildPlan::Build(SourceSpec::Tarball(sdist.clone())),
            Some(2),
            &stages.observer(),
        ))
        .expect("build");
    let switched_at = Instant::now();
    assert!(results.iter().all(|r| r.ok), "{}", describe(&results));
    let ids: Vec<_> = results
        .iter()
        .map(|r| r.identity.clone().expect("identity"))
        .collect();
    assert_eq!(
        ids[0].build,
        ids[1].build,
        "one build identity: {}",
        describe(&results)
    );
    assert_eq!(ids[0].build.backend, Some(BuildBackend::Cpu));
    assert!(ids[0].folder.is_some());
    // Same source as scripts/setup's build: the same version and commit.
    let setup_build = cluster
        .rt
        .block_on(tightwad_agent::versions::llama_build(Path::new(
            &configured,
        )))
        .expect("setup's build");
    assert_eq!(ids[0].build.commit, setup_build.commit);
    assert_eq!(ids[0].build.build_number, setup_build.build_number);
    for (result, (old_pid, ..)) in results.iter().zip(&before) {
        assert_eq!(
            result.switched,
            vec!["srv".to_string()],
            "{}",
            describe(&results)
        );
        assert!(result
            .smoke_test
            .as_deref()
            .unwrap_or("")
            .contains("generated"));
        let (pid, state, path, backend) = srv(&cluster, &result.host);
        assert_eq!(state, ProcessState::Ready);
        assert_ne!(pid, *old_pid, "{} restarted srv", result.host);
        assert!(
            path.contains("/builds/"),
            "{} runs the new build: {path}",
            result.host
        );
        assert_eq!(
            backend,
            Some(BuildBackend::Cpu),
            "inventory reports the backend"
        );
    }
    // The build carried Tightwad's bundled llama.cpp patch: the new servers take client drafts.
    for host in &cluster.hosts {
        let props: serde_json::Value = cluster
            .rt
            .block_on(async { get_json(&format!("http://{}:8080/props", host.ns.ip)).await });
        assert_eq!(
            props["capabilities"]["draft_tokens"], true,
            "{} runs a patched llama-server: {props}",
            host.name
        );
    }
    assert_traffic_spanned(&traffic, &stages, switched_at, "build");
    let built: Vec<_> = ["alpha", "beta"].map(|h| srv(&cluster, h)).into();

    // 2. A broken source: compiles, fails the smoke test, the good build keeps serving.
    let broken = broken_tarball(&sdist, &cluster.lab.path("broken-src"));
    let alpha_only: Vec<_> = hosts
        .iter()
        .filter(|h| h.name == "alpha")
        .cloned()
        .collect();
    let failed = cluster
        .rt
        .block_on(run_on_hosts(
            &fleet,
            &alpha_only,
            &BuildPlan::Build(SourceSpec::Tarball(broken)),
            Some(2),
            &Stages::default().observer(),
        ))
        .expect("build");
    let error = failed[0].error.clone().unwrap_or_default();
    assert!(!failed[0].ok, "{}", describe(&failed));
    assert!(error.contains("smoke test failed"), "{error}");
    assert!(
        error.contains("deliberately broken"),
        "the output says why: {error}"
    );
    assert!(error.contains("keeps serving"), "{error}");
    assert!(failed[0]
        .advice
        .as_deref()
        .unwrap_or("")
        .contains("keeps serving"));
    assert_eq!(
        srv(&cluster, "alpha"),
        built[0],
        "the good build keeps serving, untouched"
    );

    // 3. Roll back: both return to the configured binaries.
    let stages = Stages::default();
    let rolled = cluster
        .rt
        .block_on(run_on_hosts(
            &fleet,
            &hosts,
            &BuildPlan::Rollback,
            None,
            &stages.observer(),
        ))
        .expect("rollback");
    let rolled_at = Instant::now();
    assert!(rolled.iter().all(|r| r.ok), "{}", describe(&rolled));
    for (result, (old_pid, ..)) in rolled.iter().zip(&built) {
        assert_eq!(
            result.identity.as_ref().and_then(|i| i.folder.clone()),
            None
        );
        assert_eq!(result.switched, vec!["srv".to_string()]);
        let (pid, state, path, _) = srv(&cluster, &result.host);
        assert_eq!(state, ProcessState::Ready);
        assert_ne!(pid, *old_pid);
        assert_eq!(
            path, configured,
            "{} back on the configured binary",
            result.host
        );
    }
    assert_traffic_spanned(&traffic, &stages, rolled_at, "rollback");

    // Not one request failed through two switches per host and a failed build, nor on the
    // rolled-back servers: as many answers to requests sent after the rollback as there are
    // request loops.
    traffic.wait_for_answers_after(rolled_at, Duration::from_secs(60));
    traffic.stop.store(true, Ordering::SeqCst);
    for task in traffic.tasks {
        let _ = cluster.rt.block_on(task);
    }
    let log = traffic.log.lock().expect("log");
    let failures: Vec<&String> = log.iter().filter_map(|s| s.failure.as_ref()).collect();
    eprintln!(
        "{} requests through the proxy, {} failed",
        log.len(),
        failures.len()
    );
    assert!(log.len() >= 10, "only {} requests", log.len());
    assert!(
        failures.is_empty(),
        "requests failed during the switches: {failures:#?}"
    );
    let _ = stop_proxy.send(());
    let _ = cluster.rt.block_on(proxy_task);
}
