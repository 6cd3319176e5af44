//! llama-server's streamed `/completion` reply (`text/event-stream`) through the proxy's own
//! decoder (`backend::llamacpp::decode_sse_chunks`, the function `LlamaServer::stream` uses).
//!
//! The first input byte picks where the body is cut into network chunks; the rest is the body.
//! Properties: no panic, the stream ends (no event after an error), and the events do not depend
//! on where TCP happened to cut the body: cut anywhere, the decoded events equal those of the
//! body delivered in one piece.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;
use tightwad_serve::backend::sse::decode_sse_chunks;
use tightwad_serve::backend::types::Role;

/// Decode `chunks` and describe each event (the event types have no `PartialEq`; their `Debug`
/// text shows every field, which is what a client would get).
fn decode(runtime: &tokio::runtime::Runtime, chunks: Vec<Bytes>) -> Vec<Result<String, String>> {
    runtime.block_on(async {
        decode_sse_chunks(
            Role::Target,
            Duration::from_secs(5),
            futures::stream::iter(chunks),
        )
        .map(|event| match event {
            Ok(event) => Ok(format!("{event:?}")),
            // Error text quotes the event, which differs with the cut; that it failed is the point.
            Err(_) => Err(String::new()),
        })
        .collect()
        .await
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, body)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let whole = decode(&runtime, vec![Bytes::copy_from_slice(body)]);
    if let Some(first_error) = whole.iter().position(Result::is_err) {
        assert_eq!(first_error, whole.len() - 1, "events after an error");
    }
    // Found here once: a CRLF split across chunks was missed (fixed; regression test in
    // proxy/tests/fuzz_regressions.rs). Bodies with `\r` are fuzzed like any other.
    // Cut every `step` bytes (1 = byte by byte, the worst a network can do).
    let step = usize::from(cut_seed % 16) + 1;
    let chunks: Vec<Bytes> = body.chunks(step).map(Bytes::copy_from_slice).collect();
    let cut = decode(&runtime, chunks);
    assert_eq!(
        whole, cut,
        "the same body decoded differently when cut every {step} bytes"
    );
});
