//! `tightwad build` across a link that drops while the host compiles: the agent builds on by
//! itself, and the coordinator, once the link is back, reconnects and follows the build to its end
//! (`Request::FollowBuild`), reporting the host's outcome instead of a lost connection. A real
//! agent in a network namespace builds llama.cpp from the sdist scripts/setup uses (ccache makes
//! it mostly linking); its link is cut with `ip link set … down` for longer than the peer idle
//! timeout, so both ends of the connection really give it up.

use tightwad_e2e::cluster::*;
use tightwad_e2e::test_env::*;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tightwad_coordinator::fleet::build::{run_on_hosts, BuildPlan, SourceSpec};
use tightwad_protocol::messages::{BuildProgress, BuildStage};

#[test]
fn a_build_whose_link_drops_mid_compile_is_followed_to_its_end() {
    let sdist = PathBuf::from(require_env("TIGHTWAD_LLAMA_SOURCE"));
    let tools = require_env("TIGHTWAD_BUILD_TOOLS");
    // The ccache scripts/setup filled: $CACHE/src/<sdist> → $CACHE/ccache.
    let ccache = sdist
        .parent()
        .and_then(Path::parent)
        .expect("cache folder")
        .join("ccache");
    let build = format!(
        "[build]\nextra_path = [\"{tools}\"]\njobs = 2\nccache_dir = \"{}\"\n",
        ccache.display(),
    );
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .agent_toml(&build)
        .start();
    let fleet = cluster.fleet();
    let hosts = fleet.config.hosts.clone();
    let alpha = &cluster.hosts[0].ns;

    // Before any build, there is nothing to follow, and the agent says so.
    let entry = fleet.config.host("alpha").expect("host").clone();
    let nothing = cluster.rt.block_on(async {
        let client = fleet.connect(&entry).await.expect("connect");
        let mut stream = client
            .open(&tightwad_protocol::messages::Request::FollowBuild)
            .await
            .expect("open");
        stream.finish().expect("finish");
        stream.next_reply().await
    });
    let error = format!("{:?}", nothing.expect_err("no build yet"));
    assert!(error.contains("no build has run"), "{error}");

    let compiling = AtomicBool::new(false);
    let reports: Mutex<Vec<(BuildStage, String)>> = Mutex::default();
    let observer = |host: &str, p: &BuildProgress| {
        if p.stage != BuildStage::Compile || p.done == p.total || p.done == 0 {
            eprintln!(
                "[{host}] {:?} {}/{} {}",
                p.stage, p.done, p.total, p.message
            );
        }
        if p.stage == BuildStage::Compile {
            compiling.store(true, Ordering::SeqCst);
        }
        if let Ok(mut r) = reports.lock() {
            r.push((p.stage, p.message.clone()));
        }
    };

    let plan = BuildPlan::Build(SourceSpec::Tarball(sdist));
    let results = cluster
        .rt
        .block_on(async {
            let build = run_on_hosts(&fleet, &hosts, &plan, Some(2), &observer);
            // As soon as the host compiles, its cable is pulled for longer than the idle timeout
            // (5 s) of the peer protocol: the coordinator's connection times out.
            let cut = async {
                while !compiling.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                cluster.lab.set_link(alpha, false);
                eprintln!("alpha's link is down");
                tokio::time::sleep(Duration::from_secs(8)).await;
                cluster.lab.set_link(alpha, true);
                eprintln!("alpha's link is up again");
            };
            tokio::join!(build, cut).0
        })
        .expect("build");

    let result = &results[0];
    assert!(result.ok, "{result:#?}");
    let reports = reports.into_inner().expect("reports");
    assert!(
        reports
            .iter()
            .any(|(_, m)| m.contains("reconnecting to follow the build")),
        "the link was cut while alpha compiled, yet the coordinator never lost it: the test proves nothing: {reports:#?}"
    );
    // The outcome is the host's own: a new build, smoke-tested, current.
    let identity = result.identity.as_ref().expect("identity");
    assert!(identity.folder.is_some(), "{result:#?}");
    assert!(!result.reused, "a fresh host built it: {result:#?}");
    assert!(
        result
            .smoke_test
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty()),
        "{result:#?}"
    );
    let status = cluster.rt.block_on(async {
        fleet
            .connect(&entry)
            .await
            .expect("connect")
            .status()
            .await
            .expect("status")
    });
    let server = status
        .inventory
        .binaries
        .iter()
        .find(|b| b.kind == tightwad_protocol::messages::ProcessKind::LlamaServer)
        .expect("llama-server binary");
    assert!(
        server
            .path
            .contains(identity.folder.as_deref().unwrap_or("?")),
        "alpha now runs the build it reported: {} vs {identity:?}",
        server.path
    );
}
