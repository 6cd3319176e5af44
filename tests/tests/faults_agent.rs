//! An agent killed (SIGKILL) in the middle of a model copy, then started again: the copy resumes
//! from the partial file against the restarted agent and the result is verified. (A link cut
//! mid-copy is `agent_model_transfer.rs`; a kill differs: the process loses everything it
//! held in memory, so only what is on disk can carry the copy on.)
//!
//! Root only (network namespaces).

use std::path::Path;
use std::time::{Duration, Instant};

use tightwad_coordinator::fleet;
use tightwad_e2e::agents::{sha256_file, AgentProcess, AgentSpec};
use tightwad_e2e::netns::Lab;

const FILE: &str = "target.gguf";
/// 16 MiB/s: the 80 MB file takes about 5 s, long enough to kill an agent in the middle.
const RATE: u64 = 16 << 20;

fn part_size(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(format!(".{FILE}.part")))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Copy `FILE` from alpha to beta, kill one of them (`kill_receiver`) once 8 MiB have landed, start
/// it again, and copy again.
async fn copy_survives_a_killed_agent(kill_receiver: bool) {
    let models = std::env::var_os("TIGHTWAD_MODELS")
        .map(std::path::PathBuf::from)
        .expect("TIGHTWAD_MODELS is not set: run ./scripts/test");
    let mut lab = Lab::new();
    let ns_a = lab.add_namespace();
    let ns_b = lab.add_namespace();
    let models_a = lab.path("models-a");
    let models_b = lab.path("models-b");
    let source = models_a.join(FILE);
    if std::fs::hard_link(models.join(FILE), &source).is_err() {
        std::fs::copy(models.join(FILE), &source).expect("stock the sender");
    }
    let size = std::fs::metadata(&source).expect("model size").len();

    let coordinator_config = lab.dir.path().join("fleet.toml");
    std::fs::write(
        &coordinator_config,
        format!(
            "state_dir = \"{}\"\n[[hosts]]\nname = \"alpha\"\naddress = \"{}:7420\"\n[[hosts]]\nname = \"beta\"\naddress = \"{}:7420\"\n",
            lab.path("coordinator").display(),
            ns_a.ip,
            ns_b.ip
        ),
    )
    .expect("coordinator config");
    let fleet = fleet::Fleet::open(
        fleet::FleetConfig::load(&coordinator_config).expect("coordinator config loads"),
    )
    .expect("open the fleet");
    let token = || {
        fleet
            .pending
            .issue(fleet.identity.fingerprint(), 600)
            .expect("join token")
            .to_string()
    };
    let mut alpha = AgentProcess::start_bare(AgentSpec::new(
        &ns_a,
        lab.path("agent-a"),
        &models_a,
        Some(token()),
    ));
    let mut beta = AgentProcess::start_bare(AgentSpec::new(
        &ns_b,
        lab.path("agent-b"),
        &models_b,
        Some(token()),
    ));
    for report in fleet::status::collect(&fleet, None)
        .await
        .expect("enrollment")
    {
        assert!(report.reachable, "{report:?}");
    }

    let copy = fleet::copy(&fleet, FILE, Some("alpha"), "beta", Some(RATE), |_| {});
    let kill = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while part_size(&models_b) < 8 << 20 {
            assert!(
                Instant::now() < deadline,
                "the copy never got going (partial file {} bytes)",
                part_size(&models_b)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if kill_receiver {
            beta.kill();
        } else {
            alpha.kill();
        }
    };
    let (first, ()) = tokio::join!(copy, kill);
    let error = first.expect_err("the copy cannot finish with an agent killed");
    eprintln!("first copy failed as it must: {error:#}");
    let have = part_size(&models_b);
    assert!(
        have > 0 && have < size,
        "partial file of {have} of {size} bytes"
    );
    assert!(
        !models_b.join(FILE).exists(),
        "a final file before verification"
    );

    // Start the killed agent again (same state directory: its identity and pins survive).
    if kill_receiver {
        beta.restart();
    } else {
        alpha.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let summary = loop {
        match fleet::copy(&fleet, FILE, Some("alpha"), "beta", None, |_| {}).await {
            Ok(summary) => break summary,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!(
                "no resume after the restart: {e:#}\nalpha:\n{}\nbeta:\n{}",
                alpha.log_text(),
                beta.log_text()
            ),
        }
    };
    eprintln!("resumed from {} of {size} bytes", summary.resumed_from);
    assert!(
        summary.resumed_from > 0,
        "the copy started over instead of resuming: {summary:?}"
    );
    let expected = sha256_file(&source);
    assert_eq!(summary.sha256, expected);
    assert_eq!(sha256_file(&models_b.join(FILE)), expected);
    assert_eq!(part_size(&models_b), 0, "the partial file is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiving_agent_killed_mid_copy_resumes_the_copy_after_a_restart() {
    copy_survives_a_killed_agent(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sending_agent_killed_mid_copy_resumes_the_copy_after_a_restart() {
    copy_survives_a_killed_agent(false).await;
}
