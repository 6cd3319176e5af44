//! RPC pools and native pairing, set up by `tightwad up`'s code through real agents in network
//! namespaces: the pool's coordinator llama-server runs its model over a worker's rpc-server;
//! native pairing runs the draft model on the draft host's rpc-server inside the target's own
//! llama.cpp speculation, and its greedy output equals the target alone.
//!
//! Lives in the harness crate, not beside the coordinator: it drives coordinator code against real
//! `tightwad-agent` processes (the agent binary) in network namespaces, which is what this crate
//! starts (a coordinator test using it would make a dev-dependency cycle).

use tightwad_e2e::cluster::*;

use tightwad_coordinator::{doctor, fleet};

use doctor::Status;
use std::time::Duration;
use tightwad_protocol::messages::ProcessState;
use tightwad_serve::backend::llamacpp::LlamaServer;
use tightwad_serve::backend::types::{Role, Sampling};

const PROMPT: &str = "Once upon a time, in a lighthouse by the sea,";

/// Greedy tokens of the server at `url` after `PROMPT`, and the draft tokens its own
/// speculation drafted.
fn greedy(cluster: &TestCluster, url: &str, n: usize) -> (Vec<u32>, u64) {
    cluster.rt.block_on(async {
        let server = LlamaServer::new(Role::Target, url, Duration::from_secs(60)).expect("client");
        let prompt = server.tokenize(PROMPT, true).await.expect("tokenize");
        let completion = server
            .complete(&prompt, n, &Sampling::greedy())
            .await
            .expect("completion");
        let drafted = completion
            .timings
            .as_ref()
            .and_then(|t| t.draft_n)
            .unwrap_or(0);
        (completion.tokens, drafted)
    })
}

#[test]
fn native_pairing_runs_the_draft_on_the_remote_rpc_server_and_matches_the_target_alone() {
    let cluster = ClusterPlan::native_pairing("", "").start();
    let url = format!("http://{}:8080", cluster.host("alpha").ns.ip);

    // The target alone first.
    cluster.start_process("alpha", "target");
    let (alone, drafted_alone) = greedy(&cluster, &url, 48);
    assert_eq!(alone.len(), 48);
    assert_eq!(drafted_alone, 0);
    let fleet = cluster.fleet();
    let alpha = fleet.config.host("alpha").expect("alpha").clone();
    cluster.rt.block_on(async {
        let client = fleet.connect(&alpha).await.expect("connect");
        client.stop_process("target").await.expect("stop");
    });

    // Doctor checks the set-up before it starts: same build both sides, same vocabulary,
    // the added flags valid for this build.
    let report = cluster.doctor(true);
    assert!(report.ok, "{}", report.render());
    assert!(
        report
            .checks
            .iter()
            .filter(|c| c.subject == "native native" && c.category != doctor::Category::Payoff)
            .all(|c| c.status == Status::Pass),
        "{}",
        report.render()
    );

    let layout =
        tightwad_coordinator::cluster::layout::Layout::load(&cluster.config).expect("layout");
    let status = cluster
        .rt
        .block_on(fleet::up::start_native(&fleet, &layout.native_pairings[0]))
        .expect("native pairing starts");
    assert_eq!(status.state, ProcessState::Ready);
    let args = status.args.join(" ");
    let worker = format!("{}:50052", cluster.host("beta").ns.ip);
    assert!(
        args.contains(&format!("--rpc {worker} --spec-draft-device RPC0 -ngld 99")),
        "{args}"
    );
    assert!(args.contains("--spec-type draft-simple"), "{args}");

    let (paired, drafted) = greedy(&cluster, &url, 48);
    assert!(drafted > 0, "llama.cpp's own speculation drafted nothing");
    assert_eq!(paired, alone, "native pairing changed the greedy output");

    // With it running, doctor measures what native speculation pays on this machine.
    let report = cluster.doctor(false);
    let payoff = report
        .checks
        .iter()
        .find(|c| c.category == doctor::Category::Payoff && c.subject == "pairing native")
        .unwrap_or_else(|| panic!("no payoff check:\n{}", report.render()));
    assert!(
        matches!(payoff.status, Status::Pass | Status::Warn),
        "{payoff:?}"
    );
    let measured = payoff.details["measured_speedup"]
        .as_f64()
        .expect("measured speedup");
    assert!(measured > 0.05 && measured < 20.0, "{payoff:?}");
    assert!(report.ok, "{}", report.render());
}

#[test]
fn an_rpc_pool_starts_across_hosts_and_answers() {
    let cluster = ClusterPlan::target_and_rpc_worker("{models}/target.gguf", "")
        .host("alpha")
        .models(&["target.gguf"])
        .layout(
            r#"
[[pools]]
name = "big"
coordinator = "alpha/target"
workers = ["beta/rpc"]
place = true
"#,
        )
        .start();
    let report = cluster.doctor(true);
    assert!(report.ok, "{}", report.render());
    let fleet = cluster.fleet();
    let layout =
        tightwad_coordinator::cluster::layout::Layout::load(&cluster.config).expect("layout");
    // What the placement planner makes of this model over beta's rpc-server and alpha's RAM
    // (`place = true`: `tightwad up` starts the coordinator with exactly these flags).
    let planned = cluster.rt.block_on(async {
        let gathered = doctor::agents::gather(&fleet, &layout).await;
        let p = doctor::memory::pool_placement(&gathered, &layout.pools[0]).expect("placement");
        tightwad_placement::plan::plan(&p.bytes, &p.target, &p.options)
    });
    assert!(planned.fits, "{planned:?}");
    assert!(
        planned.flags.iter().any(|f| f == "-ngl"),
        "the plan places layers: {:?}",
        planned.flags
    );
    eprintln!("planned flags: {:?}", planned.flags);
    // `tightwad up big`: doctor's checks first, then the worker, then the coordinator.
    cluster
        .rt
        .block_on(fleet::run(
            fleet::FleetCommand::Up {
                name: Some("big".into()),
                skip_doctor: false,
                json: false,
            },
            &cluster.config,
        ))
        .expect("pool starts");
    let status = cluster
        .rt
        .block_on(fleet::status::collect(&fleet, Some("alpha")))
        .expect("status")
        .remove(0)
        .status
        .expect("alpha status")
        .processes
        .into_iter()
        .find(|p| p.name == "target")
        .expect("target process");
    assert_eq!(status.state, ProcessState::Ready);
    let started = status.args.join(" ");
    assert!(
        started.contains(&planned.flags.join(" ")),
        "the coordinator runs the planned flags {:?}: {started}",
        planned.flags
    );
    let worker = format!("{}:50052", cluster.host("beta").ns.ip);
    assert!(
        status.args.join(" ").ends_with(&format!("--rpc {worker}")),
        "{:?}",
        status.args
    );
    let url = format!("http://{}:8080", cluster.host("alpha").ns.ip);
    let (tokens, _) = greedy(&cluster, &url, 16);
    assert_eq!(tokens.len(), 16);

    // `tightwad status` shows the pool with its members' states.
    let reports = cluster
        .rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("status");
    let table = fleet::status::render_layout(&reports, &layout);
    assert!(
        table.contains("pool big: coordinator alpha/target (ready), workers beta/rpc (ready)"),
        "{table}"
    );

    // `tightwad down big`: coordinator, then worker.
    cluster
        .rt
        .block_on(fleet::run(
            fleet::FleetCommand::Down {
                name: Some("big".into()),
                json: false,
            },
            &cluster.config,
        ))
        .expect("pool stops");
    let reports = cluster
        .rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("status");
    let table = fleet::status::render_layout(&reports, &layout);
    assert!(
        table.contains("pool big: coordinator alpha/target (stopped), workers beta/rpc (stopped)"),
        "{table}"
    );
}
