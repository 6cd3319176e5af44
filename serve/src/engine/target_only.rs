//! The target alone, streamed: the rest of an answer when speculation is off or stopped, the
//! stretches that time the target's own speed, and native pairing's streams. Exact for any sampler
//! by construction.

use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::output::{FinishReason, Output};
use super::pairing::Pairing;
use super::probe::PairingInfo;
use super::request::{EngineError, Event, Run};
use crate::backend::{BackendError, Sampling};

impl Pairing {
    /// Let the target generate the rest by itself, streamed (exact for any sampler by construction).
    pub(super) async fn target_only(
        &self,
        info: &PairingInfo,
        sampling: &Sampling,
        run: &mut Run,
        tx: &mpsc::Sender<Event>,
        limit: usize,
        native_draft_tokens: Option<usize>,
    ) -> Result<Stretch, EngineError> {
        let pending = self.resolve_text(&mut run.out, true).await?;
        send_text(tx, pending).await?;
        if run.out.finish.is_some() {
            return Ok(Stretch::default());
        }
        let remaining = run.out.remaining();
        let stretch = remaining.min(limit);
        let mut events = std::pin::pin!(
            self.target
                .stream(&run.ctx, stretch, sampling, native_draft_tokens)
                .await?
        );
        let mut result = Stretch::default();
        let mut decoded_before = 0usize;
        let mut clock = StretchClock::new(native_draft_tokens.is_some_and(|k| k > 0));
        while let Some(event) = events.next().await {
            let event = event?;
            if run.out.finish.is_some() && !event.stop {
                continue;
            }
            if event.stop {
                if let Some(t) = &event.timings {
                    result.drafted = t.draft_n.unwrap_or(0) as usize;
                    result.accepted = t.draft_n_accepted.unwrap_or(0) as usize;
                }
                // The final event repeats nothing new in stream mode; it only says why it ended.
                let text = match event.stop_type.as_str() {
                    "eos" => run.out.end(FinishReason::Stop),
                    _ if stretch < remaining => String::new(),
                    _ => run.out.end(FinishReason::Length),
                };
                send_text(tx, text).await?;
                break;
            }
            let n = event.tokens_predicted.saturating_sub(decoded_before).max(1);
            decoded_before = event.tokens_predicted.max(decoded_before + n);
            clock.event(n, Instant::now());
            let ended = event
                .tokens
                .last()
                .is_some_and(|t| info.end_of_generation.contains(t));
            let mut text = run.out.push_streamed(&event.tokens, n, &event.content);
            run.ctx.extend_from_slice(&event.tokens);
            if ended {
                text.push_str(&run.out.end(FinishReason::Stop));
            }
            send_text(tx, text).await?;
            // Native pairing at the token limit: read on to the final event, which carries the
            // draft counters (the server sends it right after the last token). Otherwise (stop
            // string, EOS) stop reading: dropping the stream cancels the server's work.
            let drain =
                native_draft_tokens.is_some() && run.out.finish == Some(FinishReason::Length);
            if run.out.finish.is_some() && !drain {
                break;
            }
        }
        if run.out.finish.is_none() && stretch >= remaining {
            run.out.end(FinishReason::Length);
        }
        (result.timed_tokens, result.seconds) = clock.timed(Instant::now());
        Ok(result)
    }
}

impl Pairing {
    /// Fetch the text of tokens whose bytes the target did not report, once it is a whole
    /// character (or `force`d, or the output is finished, or the wait grew long).
    pub(super) async fn resolve_text(
        &self,
        out: &mut Output,
        force: bool,
    ) -> Result<String, BackendError> {
        if out.unresolved().is_empty() {
            return Ok(String::new());
        }
        let text = self.target.detokenize(out.to_detokenize()).await?;
        Ok(out.resolve(&text, force))
    }
}

/// Send text that is final to the client; empty text sends nothing. A closed channel means the
/// client went away.
pub(super) async fn send_text(tx: &mpsc::Sender<Event>, text: String) -> Result<(), EngineError> {
    if text.is_empty() || tx.send(Event::Text(text)).await.is_ok() {
        Ok(())
    } else {
        Err(EngineError::ClientGone)
    }
}

/// Times a stretch's decoding from the events that bring its tokens.
///
/// From the first token on (it comes with the prompt), and where the target does not draft, from
/// the second: the step that decodes it pays a one-off cost on top (on the H100's fast target
/// ~3 ms, the first one-token step after the prompt's batch), which made the 16-token stretches
/// that re-time the target read 3.43 ms a token where whole answers decoded at 3.22 — a target 6%
/// slower than it is, so a path at 0.85x looked near the line. Proxy rounds are timed after their
/// opening round likewise. A target that drafts (native pairing) sends a step's accepted tokens
/// as a burst of events, so its clock starts at the first: from the second it would count the
/// rest of that burst in no time.
#[derive(Debug)]
struct StretchClock {
    untimed_events: usize,
    events: usize,
    from: Option<Instant>,
    tokens: usize,
}

impl StretchClock {
    fn new(target_drafts: bool) -> Self {
        StretchClock {
            untimed_events: if target_drafts { 1 } else { 2 },
            events: 0,
            from: None,
            tokens: 0,
        }
    }

    /// An event brought `tokens` tokens at `at`.
    fn event(&mut self, tokens: usize, at: Instant) {
        self.events += 1;
        if self.events == self.untimed_events {
            self.from = Some(at);
        } else if self.events > self.untimed_events {
            self.tokens += tokens;
        }
    }

    /// Tokens timed and the seconds they took, the stretch having ended at `end`.
    fn timed(&self, end: Instant) -> (usize, f64) {
        let seconds = self.from.map_or(0.0, |from| {
            end.saturating_duration_since(from).as_secs_f64()
        });
        (self.tokens, seconds)
    }
}

/// What a target-only stretch produced.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stretch {
    /// Tokens after the first two (the first comes with the prompt, the second's step pays a
    /// one-off cost; a drafting target's after the first), and the seconds from the last of
    /// those to the stretch's end.
    pub(super) timed_tokens: usize,
    pub(super) seconds: f64,
    /// Native pairing only: the target's own speculation counters.
    pub(super) drafted: usize,
    pub(super) accepted: usize,
}

impl Stretch {
    pub(super) fn timed(self) -> (usize, f64) {
        (self.timed_tokens, self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::StretchClock;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_target_alone_is_timed_from_its_second_token() {
        // The first token with the prompt (10 ms), the second's step paying 3 ms on top of the
        // 3 ms every step costs: timed from the second, 8 tokens in 24 ms.
        let t0 = Instant::now();
        let mut clock = StretchClock::new(false);
        let mut at = t0 + 10 * MS;
        clock.event(1, at);
        at += 6 * MS;
        clock.event(1, at);
        for _ in 0..8 {
            at += 3 * MS;
            clock.event(1, at);
        }
        let (tokens, seconds) = clock.timed(at);
        assert_eq!(tokens, 8);
        assert!((seconds - 0.024).abs() < 1e-9, "{seconds}");
    }

    #[test]
    fn a_drafting_target_is_timed_from_its_first_token_so_a_burst_counts_with_its_step() {
        // Steps of 40 ms, each bringing 4 accepted tokens as a burst of events.
        let t0 = Instant::now();
        let mut clock = StretchClock::new(true);
        clock.event(1, t0);
        let mut at = t0;
        for _ in 0..3 {
            at += 40 * MS;
            for _ in 0..4 {
                clock.event(1, at);
            }
        }
        let (tokens, seconds) = clock.timed(at);
        assert_eq!(tokens, 12);
        assert!((seconds - 0.120).abs() < 1e-9, "{seconds}");
    }

    #[test]
    fn a_stretch_of_too_few_events_times_nothing() {
        let mut clock = StretchClock::new(false);
        let (tokens, seconds) = clock.timed(Instant::now());
        assert_eq!((tokens, seconds), (0, 0.0));
        clock.event(1, Instant::now());
        assert_eq!(clock.timed(Instant::now()).0, 0);
    }
}
