use super::*;

fn hello(version: u32, min: u32) -> Hello {
    Hello {
        protocol_version: version,
        min_protocol_version: min,
        software_version: "x".into(),
        role: NodeRole::Agent,
        node_name: "n".into(),
        capabilities: vec![],
    }
}

/// The shape numbers come from a GGUF header (or a peer's summary of one): a product that
/// overflows is "unknown", not a panic (debug) or a small wrapped number (release).
#[test]
fn kv_cache_bytes_of_absurd_shapes_is_unknown() {
    let summary = GgufSummary {
        block_count: Some(u64::MAX / 2),
        head_count: Some(1),
        embedding_length: Some(u64::MAX),
        ..GgufSummary::default()
    };
    assert_eq!(summary.kv_cache_bytes(4096), None);
    let small = GgufSummary {
        block_count: Some(2),
        head_count: Some(4),
        embedding_length: Some(256),
        ..GgufSummary::default()
    };
    assert_eq!(small.kv_cache_bytes(10), Some(2 * 10 * 4 * 128 * 2));
}

#[test]
fn negotiation_picks_common_version_or_refuses() {
    assert_eq!(hello(3, 1).negotiate(&hello(2, 2)).expect("compatible"), 2);
    assert!(hello(1, 1).negotiate(&hello(3, 2)).is_err());
    assert!(hello(3, 2).negotiate(&hello(1, 1)).is_err());
}

#[test]
fn every_reply_round_trips() {
    let replies = vec![
        Reply::Ok,
        Reply::error(ErrorKind::NotFound, "nope"),
        Reply::Status(Box::new(AgentStatus {
            node_name: "a".into(),
            software_version: "0".into(),
            protocol_version: 1,
            uptime_secs: 3,
            processes: vec![],
            inventory: Inventory::default(),
        })),
        Reply::UploadResume {
            offset: 7,
            prefix_sha256: "ab".into(),
        },
        Reply::Manifest(Box::new(PieceManifest {
            file_name: "m.gguf".into(),
            size: 9,
            sha256: "cd".into(),
            piece_bytes: 4,
            pieces: vec![[1; 32], [2; 32], [3; 32]],
        })),
        Reply::Piece {
            offset: 4,
            data: vec![0, 1, 2, 3],
        },
        Reply::ProcessMemory(Box::new(ProcessMemory {
            name: "target".into(),
            predicted: vec![DeviceBytes {
                device: "CPU".into(),
                bytes: 3,
            }],
            measured: vec![],
            rss_bytes: Some(9),
            rss_file_bytes: None,
            notes: vec!["n".into()],
        })),
    ];
    for reply in replies {
        let frame = crate::frame::encode(&reply).expect("encode");
        let back: Reply = crate::frame::decode(&frame[4..]).expect("decode");
        assert_eq!(back, reply);
    }
}
