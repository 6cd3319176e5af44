//! Peer-protocol frames as a peer could send them: a 4-byte big-endian length, then a postcard
//! payload, checked against `MAX_FRAME_BYTES` before allocating (the same steps as
//! `frame::read_frame`, minus the QUIC stream). Every message type either side decodes is tried.
//! Properties: no panic, no allocation beyond the limit (libFuzzer's `-rss_limit_mb` catches
//! that), and whatever decodes re-encodes to a payload that decodes to the same bytes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tightwad_protocol::frame::{decode, encode, MAX_FRAME_BYTES};
use tightwad_protocol::messages::{Hello, HelloReply, Reply, Request, UploadFrame};

/// Decode `payload` as `T`; if it decodes, encoding is stable (encode ∘ decode is idempotent).
fn check<T: DeserializeOwned + Serialize>(payload: &[u8]) {
    let Ok(message) = decode::<T>(payload) else {
        return;
    };
    let Ok(frame) = encode(&message) else {
        // Only a message larger than a frame may fail to encode.
        return;
    };
    let again: T = decode(&frame[4..]).expect("a frame we encoded decodes");
    let frame_again = encode(&again).expect("it encoded once");
    assert_eq!(frame, frame_again, "encoding is not stable");
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 4 {
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if size > MAX_FRAME_BYTES {
            return;
        }
        let Some(payload) = rest.get(..size) else {
            return;
        };
        rest = &rest[size..];
        check::<Request>(payload);
        check::<Reply>(payload);
        check::<UploadFrame>(payload);
        check::<Hello>(payload);
        check::<HelloReply>(payload);
    }
});
