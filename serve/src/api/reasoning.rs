//! A thinking answer in the target's shapes: `message.reasoning_content` next to `content`,
//! and in a stream `delta.reasoning_content` and `delta.content` chunks. llama-server re-parses
//! the whole text after every token and sends what grew (reasoning first, then content); the
//! proxy does the same after every piece of text the engine confirms, so each field's deltas
//! add up to the final split, whatever the round boundaries were.

use serde_json::{json, Value};

use crate::backend::reasoning::ReasoningFormat;
use crate::engine::{ForwardReason, ReasoningSplit};

/// A chat's `reasoning_format`: `None` when it names none (the target's default); a format
/// llama.cpp does not know is the target's to refuse (forwarded).
pub(super) fn requested_format(
    value: Option<&Value>,
) -> Result<Option<ReasoningFormat>, ForwardReason> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(ReasoningFormat::from_name)
            .map(Some)
            .ok_or_else(|| ForwardReason::field("reasoning_format")),
    }
}

/// One streamed answer's split so far.
pub(super) struct StreamSplit {
    split: ReasoningSplit,
    text: String,
    /// `(reasoning, content)` as last sent.
    sent: (String, String),
}

impl StreamSplit {
    pub(super) fn new(split: ReasoningSplit) -> Self {
        StreamSplit {
            split,
            text: String::new(),
            sent: (String::new(), String::new()),
        }
    }

    /// Add confirmed text (empty at the end: a forced-open block with `reasoning_format: none`
    /// has content before any text); the `(reasoning, content)` deltas it makes, either empty.
    pub(super) fn push(&mut self, text: &str) -> (String, String) {
        self.text.push_str(text);
        let now = self.split.split(&self.text);
        let deltas = (grown(&self.sent.0, &now.0), grown(&self.sent.1, &now.1));
        self.sent = now;
        deltas
    }
}

/// What `now` adds to `last` (llama.cpp's `string_diff`: nothing when it shrank).
fn grown(last: &str, now: &str) -> String {
    now.strip_prefix(last).unwrap_or_default().to_string()
}

/// The chat message of a whole answer: `reasoning_content` only when there is some, as
/// llama-server writes it.
pub(super) fn message(split: Option<&ReasoningSplit>, text: &str) -> Value {
    let Some(split) = split else {
        return json!({"role": "assistant", "content": text});
    };
    let (reasoning, content) = split.split(text);
    let mut message = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    message
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::reasoning::ReasoningSyntax;

    fn split(pending: &str, extract: bool) -> ReasoningSplit {
        ReasoningSplit {
            syntax: Arc::new(ReasoningSyntax {
                start: "<think>".into(),
                start_trailing: "\n".into(),
                end: "</think>".into(),
                end_trailing: "\n\n".into(),
                extract_by_default: true,
            }),
            pending: pending.into(),
            extract,
        }
    }

    /// Tags cut across SSE chunks: the deltas of each field add up to the whole answer's split.
    #[test]
    fn deltas_across_cut_tags_add_up_to_the_whole_split() {
        let pieces = [
            "<th", "ink>", "\nWe a", "dd.\n</", "think", ">\n", "\nTen", ".",
        ];
        for (pending, extract) in [("", true), ("", false), ("<think>\n", true)] {
            let s = split(pending, extract);
            let mut stream = StreamSplit::new(s.clone());
            let (mut r, mut c) = (String::new(), String::new());
            for p in pieces.iter().chain([&""]) {
                let (dr, dc) = stream.push(p);
                r.push_str(&dr);
                c.push_str(&dc);
            }
            assert_eq!((r, c), s.split(&pieces.concat()), "{pending:?} {extract}");
        }
        let mut stream = StreamSplit::new(split("", true));
        assert_eq!(stream.push("<th"), (String::new(), String::new()));
        assert_eq!(stream.push("ink>\nab"), ("ab".into(), String::new()));
        assert_eq!(stream.push("c</th"), ("c".into(), String::new()));
        assert_eq!(stream.push("ink>\n\nok"), (String::new(), "ok".into()));
    }

    #[test]
    fn the_formats_llama_cpp_knows_are_the_engines() {
        let format = |v: Value| requested_format(Some(&v));
        assert_eq!(format(json!("none")), Ok(Some(ReasoningFormat::None)));
        assert_eq!(
            format(json!("deepseek-legacy")),
            Ok(Some(ReasoningFormat::Extract))
        );
        assert_eq!(format(Value::Null), Ok(None));
        assert_eq!(requested_format(None), Ok(None));
        assert_eq!(
            format(json!("bogus")),
            Err(ForwardReason::field("reasoning_format"))
        );
        assert_eq!(
            format(json!(1)),
            Err(ForwardReason::field("reasoning_format"))
        );
    }

    /// Forced open, nothing generated, no extraction: the content is the open tag, and only
    /// the closing push of the stream sends it.
    #[test]
    fn the_end_of_a_stream_sends_what_the_prompt_left_open() {
        let mut stream = StreamSplit::new(split("<think>\n", false));
        assert_eq!(stream.push(""), (String::new(), "<think>\n".into()));
        assert_eq!(
            message(Some(&split("<think>\n", true)), "why\n</think>\n\nso"),
            json!({"role": "assistant", "content": "so", "reasoning_content": "why\n"})
        );
        assert_eq!(
            message(Some(&split("", true)), "plain"),
            json!({"role": "assistant", "content": "plain"})
        );
    }
}
