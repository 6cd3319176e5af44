//! The engine's answer in OpenAI's shapes: one JSON body, or SSE chunks (role, deltas, the final
//! chunk with the `tightwad` figures, usage, `[DONE]`) read from the engine's one event channel.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::error::ApiError;
use super::openai::Endpoint;
use super::reasoning::{self, StreamSplit};
use super::{guard, unix_now, AppState};
use crate::engine::{Event, Generation, Pairing, Prepared, ReasoningSplit};

/// The identity of one response, shared by its chunks.
pub(super) struct Reply {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
    pub(super) endpoint: Endpoint,
    pub(super) include_usage: bool,
    pub(super) return_token_ids: bool,
    /// When the request arrived (the latency histograms start here).
    pub(super) started: std::time::Instant,
}

impl Reply {
    fn usage(g: &Generation) -> Value {
        json!({
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens,
            "total_tokens": g.prompt_tokens + g.completion_tokens,
        })
    }

    fn speculation(g: &Generation) -> Value {
        json!({
            "served_by": g.served_by,
            "rounds": g.rounds,
            "drafted": g.drafted,
            "accepted": g.accepted,
            "pipelined_rounds": g.prefetched,
            "elapsed_ms": g.elapsed.as_millis() as u64,
        })
    }

    fn full(&self, text: &str, g: &Generation, split: Option<&ReasoningSplit>) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => json!({
                "index": 0, "text": text, "logprobs": null, "finish_reason": g.finish.as_str(),
            }),
            Endpoint::ChatCompletions => json!({
                "index": 0,
                "message": reasoning::message(split, text),
                "logprobs": null,
                "finish_reason": g.finish.as_str(),
            }),
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(g.token_ids);
        }
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::ChatCompletions => "chat.completion",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": Self::usage(g),
            "tightwad": Self::speculation(g),
        })
    }

    fn chunk(&self, choice: Value) -> Value {
        json!({
            "id": self.id,
            "object": match self.endpoint {
                Endpoint::Completions => "text_completion",
                Endpoint::ChatCompletions => "chat.completion.chunk",
            },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }

    fn delta_chunk(&self, text: &str) -> Value {
        self.chunk(match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null})
            }
            Endpoint::ChatCompletions => {
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null})
            }
        })
    }

    /// A chat delta of one field (`content`, `reasoning_content`).
    fn field_chunk(&self, field: &str, text: &str) -> Value {
        self.chunk(
            json!({"index": 0, "delta": {field: text}, "logprobs": null, "finish_reason": null}),
        )
    }

    /// The chunks for newly confirmed text: plain deltas, or the reasoning and content parts
    /// of it as the target would split them (reasoning first; nothing while a tag is cut off).
    fn text_chunks(&self, split: Option<&mut StreamSplit>, text: &str) -> Vec<Value> {
        let Some(split) = split else {
            return vec![self.delta_chunk(text)];
        };
        let (reasoning, content) = split.push(text);
        [("reasoning_content", reasoning), ("content", content)]
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(field, t)| self.field_chunk(field, &t))
            .collect()
    }

    fn role_chunk(&self) -> Value {
        self.chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
    }

    fn final_chunk(&self, g: &Generation) -> Value {
        let mut choice = match self.endpoint {
            Endpoint::Completions => {
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": g.finish.as_str()})
            }
            Endpoint::ChatCompletions => {
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": g.finish.as_str()})
            }
        };
        if self.return_token_ids {
            choice["token_ids"] = json!(g.token_ids);
        }
        let mut chunk = self.chunk(choice);
        chunk["tightwad"] = Self::speculation(g);
        chunk
    }

    fn usage_chunk(&self, g: &Generation) -> Value {
        let mut chunk = self.chunk(Value::Null);
        chunk["choices"] = json!([]);
        chunk["usage"] = Self::usage(g);
        chunk
    }
}

impl Reply {
    /// A fresh response id (`chatcmpl-…`, `cmpl-…`).
    pub(super) fn new_id(endpoint: Endpoint) -> String {
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::ChatCompletions => "chatcmpl",
        };
        format!("{prefix}-{}", uuid_like())
    }

    /// Generate and answer with one JSON body. The permit is held until the generation ends.
    pub(super) async fn whole(
        &self,
        state: &AppState,
        pairing: &Pairing,
        prepared: Prepared,
        permit: guard::Permit,
    ) -> Result<Response, ApiError> {
        let split = prepared.reasoning().cloned();
        let (tx, mut rx) = mpsc::channel::<Event>(64);
        let collect = async {
            let mut text = String::new();
            let mut first = None;
            while let Some(event) = rx.recv().await {
                match event {
                    Event::Text(t) => {
                        first.get_or_insert_with(|| self.started.elapsed());
                        text.push_str(&t)
                    }
                    Event::Done(result) => return Some((text, first, result)),
                }
            }
            None
        };
        let ((), outcome) = tokio::join!(pairing.run(prepared, tx), collect);
        drop(permit);
        let (text, first, result) =
            outcome.ok_or_else(|| ApiError::internal("the generation ended without a result"))?;
        let generation = result.inspect_err(|e| {
            state.recent.failed(&self.id, &self.model, &e.to_string());
        })?;
        pairing
            .metrics
            .latencies(generation.served_by, first, self.started.elapsed());
        state.record_generation(&self.id, &self.model, &generation);
        Ok(Json(self.full(&text, &generation, split.as_ref())).into_response())
    }

    /// Generate in a task of its own and answer with its events as SSE; the client going away
    /// drops the stream, which aborts the task and with it the backend requests.
    pub(super) fn stream(
        self,
        state: Arc<AppState>,
        pairing: Arc<Pairing>,
        prepared: Prepared,
        permit: guard::Permit,
    ) -> Response {
        let split = prepared.reasoning().cloned().map(StreamSplit::new);
        let (tx, rx) = mpsc::channel::<Event>(64);
        let span = tracing::Span::current();
        let pairing_metrics = pairing.metrics.clone();
        let task = tokio::spawn(
            async move {
                pairing.run(prepared, tx).await;
                drop(permit);
            }
            .instrument(span),
        );
        let events = self.sse(rx, split, state, pairing_metrics, AbortOnDrop(task));
        Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response()
    }

    fn sse(
        self,
        rx: mpsc::Receiver<Event>,
        split: Option<StreamSplit>,
        state: Arc<AppState>,
        metrics: crate::metrics::PairingMetrics,
        guard: AbortOnDrop,
    ) -> impl Stream<Item = Result<SseEvent, Infallible>> {
        let first = match self.endpoint {
            Endpoint::ChatCompletions => Some(self.role_chunk()),
            Endpoint::Completions => None,
        };
        let data = |v: Value| SseEvent::default().data(v.to_string());
        let initial = Streaming {
            rx,
            split,
            reply: self,
            state,
            metrics,
            _guard: guard,
            first,
            first_text: None,
            done: false,
        };
        futures::stream::unfold(initial, move |mut s| async move {
            if s.done {
                return None;
            }
            if let Some(chunk) = s.first.take() {
                return Some((vec![data(chunk)], s));
            }
            let reply = &s.reply;
            let (events, done) = match s.rx.recv().await {
                Some(Event::Text(text)) => {
                    s.first_text.get_or_insert_with(|| reply.started.elapsed());
                    let chunks = reply.text_chunks(s.split.as_mut(), &text);
                    (chunks.into_iter().map(data).collect(), false)
                }
                Some(Event::Done(Ok(g))) => {
                    s.metrics
                        .latencies(g.served_by, s.first_text, reply.started.elapsed());
                    s.state.record_generation(&reply.id, &reply.model, &g);
                    let mut events: Vec<SseEvent> = match s.split.as_mut() {
                        Some(split) => reply.text_chunks(Some(split), ""),
                        None => vec![],
                    }
                    .into_iter()
                    .map(data)
                    .collect();
                    events.push(data(reply.final_chunk(&g)));
                    if reply.include_usage {
                        events.push(data(reply.usage_chunk(&g)));
                    }
                    events.push(SseEvent::default().data("[DONE]"));
                    (events, true)
                }
                Some(Event::Done(Err(e))) => {
                    s.state
                        .recent
                        .failed(&reply.id, &reply.model, &e.to_string());
                    let e = ApiError::from(e);
                    (
                        vec![data(e.body()), SseEvent::default().data("[DONE]")],
                        true,
                    )
                }
                None => {
                    // The task ended without a result (it panicked or was aborted): say so, end.
                    let e = ApiError::internal("the generation ended unexpectedly");
                    (
                        vec![data(e.body()), SseEvent::default().data("[DONE]")],
                        true,
                    )
                }
            };
            s.done = done;
            Some((events, s))
        })
        .flat_map(|events| futures::stream::iter(events.into_iter().map(Ok)))
    }
}

/// The state of one SSE response between events.
struct Streaming {
    rx: mpsc::Receiver<Event>,
    /// A thinking answer's split so far (a chat to a target whose template thinks aloud).
    split: Option<StreamSplit>,
    reply: Reply,
    state: Arc<AppState>,
    metrics: crate::metrics::PairingMetrics,
    /// Dropped with the stream: aborts the generation.
    _guard: AbortOnDrop,
    /// The role chunk, sent first (chat).
    first: Option<Value>,
    /// When the first text came (time to first token).
    first_text: Option<std::time::Duration>,
    done: bool,
}

/// Aborts the generation task when the response stream is dropped (the client went away), so the
/// backends stop working for nobody.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A process-unique id without pulling in a UUID crate for it: time + counter + randomness.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    format!("{:x}{:04x}{:08x}", unix_now(), n & 0xffff, r)
}
