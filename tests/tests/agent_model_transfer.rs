//! Model copies between real agents over QUIC: verified, resumable after the link is cut, and
//! refusing corrupt data.
//!
//! Lives in the harness crate, not beside the agent: the agent is started as a binary in a network
//! namespace and enrolled through the coordinator's fleet code, so this tests both ends together
//! (the agent crate depends on no coordinator code, not even in its tests).

use tightwad_coordinator::fleet;
use tightwad_e2e::agents::*;
use tightwad_e2e::netns::*;
use tightwad_e2e::test_env::*;

use sha2::Digest;
use std::time::{Duration, Instant};
use tightwad_protocol::messages::{Reply, Request, UploadFrame, UploadOffer};

struct TwoHosts {
    lab: Lab,
    ns_b: Namespace,
    fleet: fleet::Fleet,
    models_a: std::path::PathBuf,
    models_b: std::path::PathBuf,
    _a: AgentProcess,
    _b: AgentProcess,
    rt: tokio::runtime::Runtime,
}

fn two_hosts(files: &[&str]) -> TwoHosts {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns_a = lab.add_namespace();
    let ns_b = lab.add_namespace();
    let config = coordinator_config(
        lab.dir.path(),
        &lab.path("coordinator"),
        &[
            ("alpha", &format!("{}:7420", ns_a.ip)),
            ("beta", &format!("{}:7420", ns_b.ip)),
        ],
    );
    let fleet = fleet_for(&config);
    let models_a = lab.path("models-a");
    let models_b = lab.path("models-b");
    stock_models(&models_a, files);
    let a = AgentProcess::start(AgentSpec {
        ns: &ns_a,
        state_dir: lab.path("agent-a"),
        models: models_a.clone(),
        join: Some(issue_token(&fleet)),
        extra_toml: String::new(),
    });
    let b = AgentProcess::start(AgentSpec {
        ns: &ns_b,
        state_dir: lab.path("agent-b"),
        models: models_b.clone(),
        join: Some(issue_token(&fleet)),
        extra_toml: String::new(),
    });
    for report in rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("enroll")
    {
        assert!(report.reachable, "{report:?}");
    }
    TwoHosts {
        lab,
        ns_b,
        fleet,
        models_a,
        models_b,
        _a: a,
        _b: b,
        rt,
    }
}

fn part_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join(format!(".{name}.part"))
}

#[test]
fn model_copy_between_agents_is_verified_and_idempotent() {
    let hosts = two_hosts(&["draft.gguf"]);
    let _runtime = hosts.rt.enter();
    // Before the copy only alpha has the file.
    let found = hosts
        .rt
        .block_on(fleet::status::find_model(&hosts.fleet, "draft.gguf"))
        .expect("find");
    assert_eq!(found[0].models.len(), 1, "{found:?}");
    assert!(
        found[1].models.is_empty() && found[1].error.is_none(),
        "{found:?}"
    );
    let mut progress_seen = 0u64;
    // No --from: the coordinator finds the host that has the file.
    let summary = hosts
        .rt
        .block_on(fleet::copy(
            &hosts.fleet,
            "draft.gguf",
            None,
            "beta",
            Some(40 << 20),
            |p| progress_seen = p.bytes_done,
        ))
        .expect("copy");
    let expected = sha256_file(&hosts.models_a.join("draft.gguf"));
    assert_eq!(summary.sha256, expected);
    assert_eq!(sha256_file(&hosts.models_b.join("draft.gguf")), expected);
    assert!(progress_seen > 0, "progress was reported");
    assert!(!part_file(&hosts.models_b, "draft.gguf").exists());
    // The copy is listed, with its metadata, on the receiver.
    let listed = hosts
        .rt
        .block_on(fleet::status::collect_models(&hosts.fleet, Some("beta")))
        .expect("list");
    assert!(
        listed[0]
            .models
            .iter()
            .any(|m| m.file_name == "draft.gguf" && m.gguf.is_some()),
        "{listed:?}"
    );
    // Again: nothing to send, still verified.
    let again = hosts
        .rt
        .block_on(fleet::copy(
            &hosts.fleet,
            "draft.gguf",
            Some("alpha"),
            "beta",
            None,
            |_| {},
        ))
        .expect("second copy");
    assert_eq!(again.sha256, expected);
    // Names that would leave the model folders are refused.
    let err = hosts.rt.block_on(fleet::copy(
        &hosts.fleet,
        "../etc/passwd",
        Some("alpha"),
        "beta",
        None,
        |_| {},
    ));
    assert!(err.is_err());
}

#[test]
fn copy_cut_off_by_a_link_down_resumes_and_verifies() {
    let hosts = two_hosts(&["target.gguf"]);
    let _runtime = hosts.rt.enter();
    let size = std::fs::metadata(hosts.models_a.join("target.gguf"))
        .expect("size")
        .len();
    // 16 MiB/s: the 80 MB file takes ~5 s; the link goes down once 8 MiB have arrived.
    let cutter = {
        let lab = &hosts.lab;
        let ns = &hosts.ns_b;
        std::thread::scope(|scope| {
            let part = part_file(&hosts.models_b, "target.gguf");
            let handle = scope.spawn(move || {
                // Cut once a few chunks have landed, however slow the machine is.
                let deadline = Instant::now() + Duration::from_secs(30);
                while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 8 << 20
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                lab.set_link(ns, false);
            });
            let result = hosts.rt.block_on(fleet::copy(
                &hosts.fleet,
                "target.gguf",
                Some("alpha"),
                "beta",
                Some(16 << 20),
                |_| {},
            ));
            let _ = handle.join();
            result
        })
    };
    let err = cutter.expect_err("the copy must fail while the link is down");
    eprintln!("cut off as expected: {err:#}");
    let part = part_file(&hosts.models_b, "target.gguf");
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    assert!(
        have > 0 && have < size,
        "partial file of {have} of {size} bytes"
    );
    assert!(
        !hosts.models_b.join("target.gguf").exists(),
        "no final file before verification"
    );

    hosts.lab.set_link(&hosts.ns_b, true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        match hosts.rt.block_on(fleet::copy(
            &hosts.fleet,
            "target.gguf",
            Some("alpha"),
            "beta",
            None,
            |_| {},
        )) {
            Ok(summary) => break summary,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying: {e:#}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("resume failed: {e:#}"),
        }
    };
    assert!(summary.resumed_from > 0, "{summary:?}");
    assert_eq!(
        summary.sha256,
        sha256_file(&hosts.models_a.join("target.gguf"))
    );
    assert_eq!(
        sha256_file(&hosts.models_b.join("target.gguf")),
        summary.sha256
    );
    assert!(!part.exists());
}

#[test]
fn corrupt_chunk_and_corrupt_partial_file_are_detected() {
    let hosts = two_hosts(&["draft.gguf"]);
    let _runtime = hosts.rt.enter();
    let source = hosts.models_a.join("draft.gguf");
    let bytes = std::fs::read(&source).expect("read model");
    let sha = sha256_file(&source);
    let chunk = 1usize << 20;
    let beta = hosts
        .rt
        .block_on(
            hosts
                .fleet
                .connect(hosts.fleet.config.host("beta").expect("host")),
        )
        .expect("connect beta");
    let offer = UploadOffer {
        file_name: "draft.gguf".into(),
        size: bytes.len() as u64,
        sha256: sha.clone(),
        chunk_size: chunk as u32,
    };

    hosts.rt.block_on(async {
        // A chunk whose bytes do not match its checksum is refused.
        let mut stream = beta
            .open(&Request::ReceiveModel(offer.clone()))
            .await
            .expect("open");
        assert!(matches!(
            stream.next_reply().await,
            Ok(Some(Reply::UploadResume { offset: 0, .. }))
        ));
        let good: [u8; 32] = sha2::Sha256::digest(&bytes[..chunk]).into();
        let mut tampered = bytes[..chunk].to_vec();
        tampered[1234] ^= 0x55;
        stream
            .send(&UploadFrame::Chunk {
                offset: 0,
                data: tampered,
                sha256: good,
            })
            .await
            .expect("send");
        let err = stream
            .next_reply()
            .await
            .expect_err("corrupt chunk refused");
        assert!(err.to_string().contains("corrupt"), "{err}");

        // One good chunk, then the sender vanishes: 1 MiB stays as a partial file.
        let mut stream = beta
            .open(&Request::ReceiveModel(offer.clone()))
            .await
            .expect("open");
        assert!(matches!(
            stream.next_reply().await,
            Ok(Some(Reply::UploadResume { .. }))
        ));
        stream
            .send(&UploadFrame::Chunk {
                offset: 0,
                data: bytes[..chunk].to_vec(),
                sha256: good,
            })
            .await
            .expect("send");
        let part = part_file(&hosts.models_b, "draft.gguf");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < chunk as u64 {
            assert!(Instant::now() < deadline, "chunk never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stream.reset(9);
    });

    // The partial file is damaged on disk: the resume notices (prefix checksum), starts over,
    // and the result verifies.
    let part = part_file(&hosts.models_b, "draft.gguf");
    let mut damaged = std::fs::read(&part).expect("part");
    damaged[100] ^= 0xff;
    std::fs::write(&part, damaged).expect("damage");
    let summary = hosts
        .rt
        .block_on(fleet::copy(
            &hosts.fleet,
            "draft.gguf",
            Some("alpha"),
            "beta",
            None,
            |_| {},
        ))
        .expect("copy after damage");
    assert_eq!(summary.resumed_from, 0, "damaged prefix must not be reused");
    assert_eq!(sha256_file(&hosts.models_b.join("draft.gguf")), sha);
}
