//! Who may talk to an agent: unknown peers, wrong join tokens, changed keys and incompatible
//! versions are refused on both sides; malformed and oversize frames cost only their stream.
//!
//! Lives in the harness crate, not beside the agent: the agent is started as a binary in a network
//! namespace and enrolled through the coordinator's fleet code, so this tests both ends together
//! (the agent crate depends on no coordinator code, not even in its tests).

use tightwad_coordinator::fleet;
use tightwad_e2e::agents::*;
use tightwad_e2e::netns::*;
use tightwad_e2e::test_env::*;

use std::time::Duration;
use tightwad_protocol::client::ClientEndpoint;
use tightwad_protocol::messages::{Hello, NodeRole, Reply, Request};
use tightwad_protocol::token::JoinToken;
use tightwad_protocol::trust::{PeerRole, ServerExpectation};

fn error_text<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unknown_coordinator_is_refused_by_the_agent_and_unknown_agent_by_the_coordinator() {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let address = format!("{}:7420", ns.ip);
    let config = coordinator_config(
        lab.dir.path(),
        &lab.path("coordinator"),
        &[("alpha", &address)],
    );
    let fleet = fleet_for(&config);
    let token = issue_token(&fleet);
    let agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: lab.path("agent"),
        models: lab.path("models"),
        join: Some(token),
        extra_toml: String::new(),
    });
    rt.block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
        .expect("enrollment");

    // Another coordinator (own identity, own pending token): the agent has not pinned it.
    let stranger_config = coordinator_config(
        lab.dir.path(),
        &lab.path("stranger"),
        &[("alpha", &address)],
    );
    let stranger = fleet_for(&stranger_config);
    issue_token(&stranger);
    let text =
        error_text(rt.block_on(stranger.connect(stranger.config.host("alpha").expect("host"))));
    assert!(text.contains("refused our certificate"), "{text}");
    agent.wait_for_log(
        "refused a peer whose certificate is not pinned",
        Duration::from_secs(5),
    );

    // Without any pending token, an unpinned host is refused by the coordinator before a byte of
    // TLS: nothing to enroll it with.
    let lonely = fleet_for(&coordinator_config(
        lab.dir.path(),
        &lab.path("lonely"),
        &[("alpha", &address)],
    ));
    let text = error_text(rt.block_on(lonely.connect(lonely.config.host("alpha").expect("host"))));
    assert!(text.contains("not enrolled"), "{text}");

    // The enrolled coordinator still gets in.
    rt.block_on(fleet::status::collect(&fleet, None))
        .expect("status")
        .iter()
        .for_each(|r| assert!(r.reachable, "{r:?}"));
}

#[test]
fn wrong_join_token_is_refused_on_both_sides() {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let address = format!("{}:7420", ns.ip);
    let fleet = fleet_for(&coordinator_config(
        lab.dir.path(),
        &lab.path("coordinator"),
        &[("alpha", &address)],
    ));
    issue_token(&fleet);
    // Right coordinator fingerprint, wrong secret.
    let forged = JoinToken::generate(fleet.identity.fingerprint()).to_string();
    let agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: lab.path("agent"),
        models: lab.path("models"),
        join: Some(forged),
        extra_toml: String::new(),
    });
    let text = error_text(rt.block_on(fleet.connect(fleet.config.host("alpha").expect("host"))));
    assert!(
        text.contains("enrollment refused") && text.contains("wrong or expired token"),
        "{text}"
    );
    agent.wait_for_log(
        "the coordinator refused our enrollment",
        Duration::from_secs(5),
    );
    assert!(
        fleet.trust.by_name("alpha", PeerRole::Agent).is_none(),
        "refused agent must not be pinned"
    );
    assert!(
        fleet.pending.any().expect("pending"),
        "the real token stays unused"
    );
}

#[test]
fn changed_keys_are_refused_on_both_sides() {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let address = format!("{}:7420", ns.ip);
    let coordinator_state = lab.path("coordinator");
    let config = coordinator_config(lab.dir.path(), &coordinator_state, &[("alpha", &address)]);
    let fleet = fleet_for(&config);
    let token = issue_token(&fleet);
    let agent_state = lab.path("agent");
    let mut agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: agent_state.clone(),
        models: lab.path("models"),
        join: Some(token),
        extra_toml: String::new(),
    });
    rt.block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
        .expect("enrollment");
    let pinned_agent = fleet
        .trust
        .by_name("alpha", PeerRole::Agent)
        .expect("pinned")
        .fingerprint;

    // The agent gets a new key (state wiped except its trust list): the coordinator refuses it,
    // naming both fingerprints.
    agent.stop();
    let (cert, key) = tightwad_protocol::identity::identity_files(&agent_state);
    std::fs::remove_file(cert).expect("rm cert");
    std::fs::remove_file(key).expect("rm key");
    let agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: agent_state.clone(),
        models: lab.path("models"),
        join: None,
        extra_toml: String::new(),
    });
    let text = error_text(rt.block_on(fleet.connect(fleet.config.host("alpha").expect("host"))));
    assert!(
        text.contains("does not match the pinned fingerprint")
            && text.contains(&pinned_agent.to_string()),
        "{text}"
    );

    // The coordinator gets a new key: the agent refuses it.
    let (cert, key) = tightwad_protocol::identity::identity_files(&coordinator_state);
    std::fs::remove_file(cert).expect("rm cert");
    std::fs::remove_file(key).expect("rm key");
    let renewed = fleet_for(&config);
    // Pin the agent's new key on the coordinator side, so only the agent's check is left.
    let new_agent = rt.block_on(async {
        let endpoint = ClientEndpoint::new(
            renewed.identity.clone(),
            Hello::ours(NodeRole::Coordinator, "probe", vec![]),
        )
        .expect("endpoint");
        endpoint
            .connect(&address, ServerExpectation::Enrollment)
            .await
            .map(|c| c.peer_fingerprint())
    });
    assert!(
        new_agent.is_err(),
        "agent must refuse the coordinator's new key"
    );
    agent.wait_for_log(
        "refused a peer whose certificate is not pinned",
        Duration::from_secs(5),
    );
}

#[test]
fn incompatible_versions_malformed_and_oversize_frames_are_refused_without_taking_the_agent_down() {
    let rt = runtime();
    let _runtime = rt.enter();
    let mut lab = Lab::new();
    let ns = lab.add_namespace();
    let address = format!("{}:7420", ns.ip);
    let fleet = fleet_for(&coordinator_config(
        lab.dir.path(),
        &lab.path("coordinator"),
        &[("alpha", &address)],
    ));
    let token = issue_token(&fleet);
    let agent = AgentProcess::start(AgentSpec {
        ns: &ns,
        state_dir: lab.path("agent"),
        models: lab.path("models"),
        join: Some(token),
        extra_toml: String::new(),
    });
    let client = rt
        .block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
        .expect("enrollment");
    let pinned = client.peer_fingerprint();

    rt.block_on(async {
        // A frame header claiming 1 GiB: refused by size before anything is read.
        let mut stream = client.open_stream().await.expect("stream");
        stream
            .send_raw(&(1u32 << 30).to_be_bytes())
            .await
            .expect("send");
        match stream.recv::<Reply>().await {
            Ok(Some(Reply::Error(e))) => assert!(e.message.contains("exceeds the limit"), "{e}"),
            other => panic!("oversize frame not refused: {other:?}"),
        }
        // A well-sized frame of garbage.
        let mut stream = client.open_stream().await.expect("stream");
        let mut garbage = 8u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff; 8]);
        stream.send_raw(&garbage).await.expect("send");
        stream.finish().expect("finish");
        match stream.recv::<Reply>().await {
            Ok(Some(Reply::Error(e))) => assert!(e.message.contains("malformed"), "{e}"),
            other => panic!("garbage not refused: {other:?}"),
        }
        // A frame cut short.
        let mut stream = client.open_stream().await.expect("stream");
        stream.send_raw(&[0, 0, 0, 50, 1, 2]).await.expect("send");
        stream.finish().expect("finish");
        assert!(matches!(
            stream.recv::<Reply>().await,
            Ok(Some(Reply::Error(_))) | Err(_)
        ));
        // The same connection still serves requests.
        client.status().await.expect("status after bad frames");
        let second_hello = client
            .call(&Request::Hello(Hello::ours(
                NodeRole::Coordinator,
                "x",
                vec![],
            )))
            .await;
        assert!(second_hello.is_err(), "a second hello is refused");
        client.list_models().await.expect("still serving");

        // A peer speaking a protocol from the future: both sides say so.
        let mut future = Hello::ours(NodeRole::Coordinator, "future", vec![]);
        future.protocol_version = 99;
        future.min_protocol_version = 99;
        let endpoint = ClientEndpoint::new(fleet.identity.clone(), future).expect("endpoint");
        let err = endpoint
            .connect(&address, ServerExpectation::Pinned(pinned))
            .await
            .err()
            .expect("refused");
        assert!(
            err.to_string().to_lowercase().contains("incompatible"),
            "{err}"
        );
    });
    agent.wait_for_log("incompatible peer", Duration::from_secs(5));
    let reports = rt
        .block_on(fleet::status::collect(&fleet, None))
        .expect("status");
    assert!(reports[0].reachable, "agent survived: {reports:?}");
}
