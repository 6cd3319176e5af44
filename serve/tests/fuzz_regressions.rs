//! Inputs the fuzz targets in `fuzz/` found or probe for, kept as plain tests so they run in every
//! `cargo test` (the fuzzers themselves need cargo-fuzz and a nightly, or a bootstrapped stable,
//! compiler: `scripts/fuzz`).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tightwad_serve::backend::sse::decode_sse_chunks;
use tightwad_serve::backend::types::Role;

/// Decode `chunks` and describe each event the way `fuzz/fuzz_targets/sse_stream.rs` compares
/// them (`Debug` of the event; an error is just an error).
async fn decode(chunks: &[&[u8]]) -> Vec<Result<String, ()>> {
    let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    decode_sse_chunks(
        Role::Target,
        Duration::from_secs(5),
        futures::stream::iter(chunks),
    )
    .map(|event| event.map(|e| format!("{e:?}")).map_err(|_| ()))
    .collect()
    .await
}

/// A CRLF line ending split across two network chunks (`\r` ends one, `\n` starts the next) must
/// decode like the same bytes in one chunk. Found while writing `fuzz/fuzz_targets/sse_stream.rs`: before the fix the
/// decoder replaces CRLF chunk by chunk, so such a split leaves a lone `\r`, the blank line between
/// two events is not seen, the two merge, and the stream fails as malformed. Fixed in
/// `sse_events` (proxy/src/backend/llamacpp.rs): line ends are normalised on the whole buffer.
#[tokio::test]
async fn a_crlf_split_across_chunks_decodes_like_the_whole_body() {
    let body: &[u8] = b"data: {\"tokens\":[5]}\r\n\r\ndata: {\"tokens\":[6],\"stop\":true}\r\n\r\n";
    let whole = decode(&[body]).await;
    assert_eq!(whole.len(), 2, "{whole:?}");
    assert!(whole.iter().all(Result::is_ok), "{whole:?}");
    for cut in 1..body.len() {
        let (a, b) = body.split_at(cut);
        assert_eq!(decode(&[a, b]).await, whole, "cut at byte {cut}");
    }
}
