//! Server-sent events as both server kinds stream them: `data:` lines, events split by a blank
//! line, CRLF or LF, chunk boundaries anywhere, `[DONE]` at the end, and an idle timeout.

use std::time::Duration;

use futures::{Stream, StreamExt};

use super::http::truncate;
use super::types::{Role, StreamEvent};
use super::BackendError;

/// The stream decoder that the llama.cpp client's `stream` uses, fed from plain byte chunks instead of a
/// live HTTP response. Public only so the fuzz targets (`fuzz/fuzz_targets/sse_stream.rs`) and
/// regression tests can drive the exact decoder the target-only path runs, chunk boundaries
/// included; the proxy itself never calls it.
pub fn decode_sse_chunks(
    role: Role,
    idle: Duration,
    chunks: impl Stream<Item = bytes::Bytes> + Send + 'static,
) -> impl Stream<Item = Result<StreamEvent, BackendError>> + Send + 'static {
    sse_events::<StreamEvent>(role, idle, chunks.map(Ok::<_, reqwest::Error>))
}

/// Decode a `text/event-stream` body into typed events, failing on a stall longer than `idle`.
/// Generic over the event type: the vLLM client decodes its own chunk shape with it.
pub(crate) fn sse_events<T: serde::de::DeserializeOwned + Send + 'static>(
    role: Role,
    idle: Duration,
    bytes: impl Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send + 'static,
) -> impl Stream<Item = Result<T, BackendError>> + Send + 'static {
    let state = (Box::pin(bytes), Vec::<u8>::new(), false);
    futures::stream::unfold(state, move |(mut bytes, mut buf, mut done)| async move {
        loop {
            if done {
                return None;
            }
            if let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
                let event: Vec<u8> = buf.drain(..pos + 2).collect();
                let text = String::from_utf8_lossy(&event);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                if data == "[DONE]" {
                    done = true;
                    continue;
                }
                let parsed: Result<T, _> = serde_json::from_str(&data);
                let item = parsed.map_err(|e| BackendError::Malformed {
                    server: role.as_str(),
                    path: "/completion (stream)".into(),
                    detail: format!("{e} in event {:?}", truncate(&data, 200)),
                });
                if item.is_err() {
                    done = true;
                }
                return Some((item, (bytes, buf, done)));
            }
            match tokio::time::timeout(idle, bytes.next()).await {
                Err(_) => {
                    let err = BackendError::Timeout {
                        server: role.as_str(),
                        path: "/completion (stream)".into(),
                        seconds: idle.as_secs(),
                    };
                    return Some((Err(err), (bytes, buf, true)));
                }
                Ok(None) => {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    // A final event without its blank line: process it as complete.
                    buf.extend_from_slice(b"\n\n");
                }
                Ok(Some(Ok(chunk))) => append_normalized(&mut buf, &chunk),
                Ok(Some(Err(e))) => {
                    let err = BackendError::Malformed {
                        server: role.as_str(),
                        path: "/completion (stream)".into(),
                        detail: format!("connection broke mid-stream: {e}"),
                    };
                    return Some((Err(err), (bytes, buf, true)));
                }
            }
        }
    })
}

/// Append a network chunk, turning each CRLF of the original byte stream into LF exactly once,
/// wherever the chunk boundaries fall: a `\r` that ended the previous chunk pairs with a `\n`
/// starting this one (a chunk's trailing `\r` is never consumed before the next chunk arrives,
/// since events end with `\n\n`).
fn append_normalized(buf: &mut Vec<u8>, chunk: &[u8]) {
    if buf.last() == Some(&b'\r') && chunk.first() == Some(&b'\n') {
        buf.pop();
    }
    for (i, b) in chunk.iter().enumerate() {
        if *b == b'\r' && chunk.get(i + 1) == Some(&b'\n') {
            continue;
        }
        buf.push(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_sse_events_across_chunk_boundaries() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"data: {\"tokens\":[5],\"st")),
            Ok(bytes::Bytes::from_static(b"op\":false}\r\n\r\ndata: {\"tokens\":[6],\"stop\":true,\"stop_type\":\"eos\"}\n\n")),
        ];
        let events: Vec<_> = sse_events::<StreamEvent>(
            Role::Target,
            Duration::from_secs(1),
            futures::stream::iter(chunks),
        )
        .collect()
        .await;
        assert_eq!(events.len(), 2);
        let first = events[0].as_ref().expect("first event parses");
        assert_eq!(first.tokens, vec![5]);
        let second = events[1].as_ref().expect("second event parses");
        assert!(second.stop);
        assert_eq!(second.stop_type, "eos");
    }

    #[tokio::test]
    async fn garbage_in_a_stream_is_an_error_not_a_panic() {
        let chunks: Vec<Result<bytes::Bytes, reqwest::Error>> =
            vec![Ok(bytes::Bytes::from_static(b"data: {not json\n\n"))];
        let events: Vec<_> = sse_events::<StreamEvent>(
            Role::Draft,
            Duration::from_secs(1),
            futures::stream::iter(chunks),
        )
        .collect()
        .await;
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], Err(BackendError::Malformed { .. })));
    }
}
