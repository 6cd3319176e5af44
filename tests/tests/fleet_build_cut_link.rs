//! `tightwad build` across a link that drops while the host compiles: the agent builds on by
//! itself, and the coordinator, once the link is back, reconnects and follows the build to its end
//! (`Request::FollowBuild`), reporting the host's outcome instead of a lost connection. A real
//! agent in a network namespace builds llama.cpp from the sdist scripts/setup uses (ccache makes
//! it mostly linking); its link is cut with `ip link set … down` for longer than the peer idle
//! timeout, so both ends of the connection really give it up. And when the coordinator that
//! started a build goes away for good (stopped mid-compile), the next one follows the build
//! (`tightwad build --follow`) to the same end.

use tightwad_e2e::cluster::*;
use tightwad_e2e::test_env::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tightwad_coordinator::fleet::build::{run_on_hosts, BuildPlan, HostResult, SourceSpec};
use tightwad_protocol::messages::{BuildProgress, BuildStage};

/// One host, alpha, whose agent builds with the ccache scripts/setup filled; and the source.
fn one_building_host() -> (TestCluster, PathBuf) {
    let (sdist, build) = llama_build_source();
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .agent_toml(&build)
        .start();
    (cluster, sdist)
}

/// `tightwad build --follow` on the cluster's hosts.
fn follow(
    cluster: &TestCluster,
    observer: &(dyn Fn(&str, &BuildProgress) + Sync),
) -> Vec<HostResult> {
    let fleet = cluster.fleet();
    let hosts = fleet.config.hosts.clone();
    cluster
        .rt
        .block_on(run_on_hosts(
            &fleet,
            &hosts,
            &BuildPlan::Follow,
            None,
            &observer,
        ))
        .expect("follow")
}

#[test]
fn a_build_whose_link_drops_mid_compile_is_followed_to_its_end() {
    let (cluster, sdist) = one_building_host();
    let fleet = cluster.fleet();
    let hosts = fleet.config.hosts.clone();
    let alpha = &cluster.hosts[0].ns;

    // Before any build, there is nothing to follow, and the host says so.
    let quiet = |_: &str, _: &BuildProgress| {};
    let nothing = follow(&cluster, &quiet);
    let error = nothing[0].error.clone().unwrap_or_default();
    assert!(
        !nothing[0].ok && error.contains("no build has run"),
        "{nothing:#?}"
    );
    assert!(nothing[0]
        .advice
        .as_deref()
        .is_some_and(|a| a.contains("nothing to follow")));

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
    let status = cluster.agent_status("alpha");
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

#[test]
fn a_build_whose_coordinator_went_away_is_followed_by_the_next_one() {
    let (cluster, sdist) = one_building_host();
    let fleet = cluster.fleet();
    let hosts = fleet.config.hosts.clone();

    // The first coordinator starts the build and is stopped once alpha compiles: its future is
    // dropped, and its connection with it.
    let compiling = AtomicBool::new(false);
    let first = |_: &str, p: &BuildProgress| {
        if p.stage == BuildStage::Compile {
            compiling.store(true, Ordering::SeqCst);
        }
    };
    let plan = BuildPlan::Build(SourceSpec::Tarball(sdist));
    cluster.rt.block_on(async {
        tokio::select! {
            results = run_on_hosts(&fleet, &hosts, &plan, Some(2), &first) => {
                panic!("the build ended before alpha compiled: {results:?}")
            }
            () = async {
                while !compiling.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } => {}
        }
    });

    // The next one follows what alpha is doing, to its end.
    let stages: Mutex<Vec<BuildStage>> = Mutex::default();
    let next = |host: &str, p: &BuildProgress| {
        eprintln!(
            "[{host}] {:?} {}/{} {}",
            p.stage, p.done, p.total, p.message
        );
        if let Ok(mut s) = stages.lock() {
            s.push(p.stage);
        }
    };
    let results = follow(&cluster, &next);
    let result = &results[0];
    assert!(result.ok, "{result:#?}");
    assert!(!result.reused, "{result:#?}");
    assert!(
        result.identity.as_ref().is_some_and(|i| i.folder.is_some()),
        "{result:#?}"
    );
    let heard = stages.lock().expect("stages").clone();
    assert!(
        heard.contains(&BuildStage::SmokeTest) || heard.contains(&BuildStage::Switch),
        "the follower heard the build's later stages: {heard:?}"
    );

    // Following again hears how that build ended, the same outcome.
    let again = follow(&cluster, &next);
    assert_eq!(again[0].build, result.build, "{again:#?}");
    assert!(again[0].ok);
}
