//! The protocol library end to end on loopback, without an agent: pinning both ways, Hello,
//! request/reply and streamed replies, refusals.

use std::sync::Arc;
use tightwad_protocol::client::ClientEndpoint;
use tightwad_protocol::identity::NodeIdentity;
use tightwad_protocol::messages::*;
use tightwad_protocol::server::{handshake, Server};
use tightwad_protocol::trust::{PeerRole, ServerExpectation, TrustStore};
use tightwad_protocol::{Fingerprint, ProtocolError};

/// A minimal agent: answers Hello, Status with an empty status, Logs with three frames.
async fn serve(server: Server) {
    while let Some(incoming) = server.accept().await {
        tokio::spawn(async move {
            let Ok(peer) = handshake(incoming).await else {
                return;
            };
            while let Some(mut stream) = peer.accept().await {
                tokio::spawn(async move {
                    let reply = match stream.read_request().await {
                        Ok(Request::Hello(theirs)) => {
                            let ours = Hello::ours(NodeRole::Agent, "loop", vec![Capability::Logs]);
                            match ours.negotiate(&theirs) {
                                Ok(v) => Reply::Hello(HelloReply {
                                    hello: ours,
                                    negotiated_version: v,
                                    join_proof: None,
                                }),
                                Err(e) => {
                                    Reply::error(ErrorKind::IncompatibleVersion, e.to_string())
                                }
                            }
                        }
                        Ok(Request::Logs { .. }) => {
                            for i in 0..3 {
                                let line = LogLine {
                                    stream: LogStream::Stdout,
                                    line: format!("line {i}"),
                                };
                                let _ = stream.reply(&Reply::LogLines(vec![line])).await;
                            }
                            let _ = stream.stream.finish();
                            stream.stream.stopped().await;
                            return;
                        }
                        Ok(other) => {
                            Reply::error(ErrorKind::BadRequest, format!("no {}", other.kind()))
                        }
                        Err(_) => return,
                    };
                    let _ = stream.reply_and_finish(&reply).await;
                });
            }
        });
    }
}

struct Pair {
    server_fp: Fingerprint,
    address: String,
    _dir: tempfile::TempDir,
}

fn start_server(client_fp: Option<Fingerprint>) -> Pair {
    let dir = tempfile::tempdir().expect("tempdir");
    let identity = NodeIdentity::load_or_create(dir.path(), "server").expect("identity");
    let trust = TrustStore::load(dir.path()).expect("trust");
    if let Some(fp) = client_fp {
        trust
            .pin("coordinator", fp, PeerRole::Coordinator)
            .expect("pin");
    }
    let server = Server::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &identity,
        Arc::clone(&trust),
    )
    .expect("bind");
    let address = server.local_addr().expect("addr").to_string();
    tokio::spawn(serve(server));
    Pair {
        server_fp: identity.fingerprint(),
        address,
        _dir: dir,
    }
}

fn client(identity: &NodeIdentity) -> ClientEndpoint {
    ClientEndpoint::new(
        identity.clone(),
        Hello::ours(NodeRole::Coordinator, "test", vec![]),
    )
    .expect("endpoint")
}

#[tokio::test]
async fn pinned_both_ways_hello_and_streamed_replies() {
    let me = NodeIdentity::generate("coordinator").expect("identity");
    let pair = start_server(Some(me.fingerprint()));
    let endpoint = client(&me);
    let connection = endpoint
        .connect(&pair.address, ServerExpectation::Pinned(pair.server_fp))
        .await
        .expect("connect");
    assert_eq!(connection.peer_fingerprint(), pair.server_fp);
    let hello = connection.peer_hello().expect("hello");
    assert_eq!(
        hello.negotiated_version,
        tightwad_protocol::PROTOCOL_VERSION
    );
    assert_eq!(hello.hello.capabilities, vec![Capability::Logs]);
    let mut logs = connection.logs("x", 10, false).await.expect("logs");
    let mut lines = Vec::new();
    while let Some(Reply::LogLines(batch)) = logs.next_reply().await.expect("frame") {
        lines.extend(batch.into_iter().map(|l| l.line));
    }
    assert_eq!(lines, vec!["line 0", "line 1", "line 2"]);
    let err = connection.status().await.expect_err("server has no status");
    assert!(matches!(err, ProtocolError::Remote(_)), "{err}");
}

#[tokio::test]
async fn wrong_server_key_is_reported_with_both_fingerprints() {
    let me = NodeIdentity::generate("coordinator").expect("identity");
    let pair = start_server(Some(me.fingerprint()));
    let pinned = Fingerprint::of_der(b"some other certificate");
    let err = client(&me)
        .connect(&pair.address, ServerExpectation::Pinned(pinned))
        .await
        .err()
        .expect("refused");
    match err {
        ProtocolError::FingerprintChanged { pinned: p, got } => {
            assert_eq!(p, pinned);
            assert_eq!(got, pair.server_fp);
        }
        other => panic!("expected FingerprintChanged, got {other}"),
    }
}

#[tokio::test]
async fn unpinned_client_is_refused_by_the_server() {
    let stranger = NodeIdentity::generate("stranger").expect("identity");
    let pair = start_server(None);
    let err = client(&stranger)
        .connect(&pair.address, ServerExpectation::Pinned(pair.server_fp))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("refused our certificate"), "{err}");
}

#[tokio::test]
async fn incompatible_versions_are_refused() {
    let me = NodeIdentity::generate("coordinator").expect("identity");
    let pair = start_server(Some(me.fingerprint()));
    let mut old = Hello::ours(NodeRole::Coordinator, "old", vec![]);
    old.protocol_version = 0;
    old.min_protocol_version = 0;
    let endpoint = ClientEndpoint::new(me.clone(), old).expect("endpoint");
    let err = endpoint
        .connect(&pair.address, ServerExpectation::Pinned(pair.server_fp))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("incompatible"), "{err}");
}

#[tokio::test]
async fn dead_address_times_out_quickly() {
    let me = NodeIdentity::generate("coordinator").expect("identity");
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let address = silent.local_addr().expect("addr").to_string();
    let started = std::time::Instant::now();
    let err = client(&me)
        .connect(&address, ServerExpectation::Enrollment)
        .await
        .err()
        .expect("no answer");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(err, ProtocolError::Connect { .. }), "{err}");
}
