//! A thinking chat template's answer split as llama-server splits it, so the engine can speculate
//! on such chats and still answer in the target's own `reasoning_content` and `content`.
//!
//! The pinned llama-server (llama.cpp 0c1e570, `common/chat-auto-parser-generator.cpp`) builds a
//! parser from its analysis of the template. For a template without content markers, asked
//! without tools or a response format, it is
//!
//! ```text
//! literal(G[..G.find(start)]) space() [optional(optspace(START) reasoning(until(end)) optspace(END))] content(rest)
//! ```
//!
//! run, leniently (a tag cut off by the end of the text waits), over the generation prompt `G`
//! followed by the generated text; `start`/`end` are the template's tags trimmed, `START`/`END`
//! as the template writes them, whose whitespace is optional one character at a time. A
//! reasoning of whitespace only is dropped. With `reasoning_format: none` the block is not
//! looked for: everything after the leading whitespace is content (with a forced-open block,
//! `<think>\n` from `G` included). The same parse runs on every partial text of a stream, and
//! the deltas are the differences, so streamed deltas concatenate to the final split.
//!
//! The template's tags are learned by asking the target: `/apply-template` continuing an
//! assistant message writes `START` before its `reasoning_content` and `END` after it, exactly
//! as the parser knows them; one chat request of one token then checks that the target splits
//! that probe as [`ReasoningSyntax::split`] does, and tells whether it extracts reasoning when
//! a request does not say (`--reasoning-format`). Templates llama.cpp parses with a dedicated
//! parser (GPT-OSS, Qwen3-Coder, Gemma 4, …) are not reproduced.

use serde_json::{json, Value};

use super::llamacpp::LlamaServer;

/// How the target's chat endpoint marks and splits thinking, as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasoningSyntax {
    /// The opening tag, trimmed (`<think>`).
    pub start: String,
    /// The whitespace the template writes after the opening tag (`\n`).
    pub start_trailing: String,
    /// The closing tag, trimmed (`</think>`).
    pub end: String,
    /// The whitespace the template writes after the closing tag (`\n\n`).
    pub end_trailing: String,
    /// The target extracts reasoning for a request that names no `reasoning_format` (its
    /// `--reasoning-format` is not `none`).
    pub extract_by_default: bool,
}

/// The `reasoning_format` a chat request may name: split the thinking out, or leave it in the
/// content. llama.cpp parses `auto`, `deepseek` and `deepseek-legacy` alike (the legacy flag
/// is no longer read by its parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    Extract,
    None,
}

impl ReasoningFormat {
    /// The format a request names, `None` for a name llama.cpp does not know (it refuses those).
    pub fn from_name(name: &str) -> Option<ReasoningFormat> {
        match name {
            "none" => Some(ReasoningFormat::None),
            "auto" | "deepseek" | "deepseek-legacy" => Some(ReasoningFormat::Extract),
            _ => None,
        }
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp's parser and trimming use.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn trim_c_space_end(s: &str) -> &str {
    s.trim_end_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

fn trim_c_space(s: &str) -> &str {
    trim_c_space_end(s).trim_start_matches(|c: char| c.is_ascii() && is_c_space(c as u8))
}

/// Byte length of the longest common prefix, on a character boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// What the generation prompt adds to the conversation: the prompt with it, less the common
/// prefix with the prompt without it (llama.cpp's `common_chat_template_generation_prompt`).
pub fn generation_prompt<'a>(with: &'a str, without: &str) -> &'a str {
    &with[common_prefix(with, without)..]
}

impl ReasoningSyntax {
    /// The part of the generation prompt the parser reads as text, not as the literal prefix:
    /// from the opening tag on (a template that forces the block open ends its prompt with
    /// `<think>\n`), else nothing.
    pub fn pending<'a>(&self, generation_prompt: &'a str) -> &'a str {
        match generation_prompt.find(&self.start) {
            Some(i) => &generation_prompt[i..],
            None => "",
        }
    }

    /// llama-server's `(reasoning_content, content)` of `pending` (see [`Self::pending`])
    /// followed by the generated `text`, the same for a partial text of a stream as for the
    /// whole answer.
    pub fn split(&self, pending: &str, text: &str, extract: bool) -> (String, String) {
        let input = format!("{pending}{text}");
        let b = input.as_bytes();
        let mut pos = 0;
        while pos < b.len() && is_c_space(b[pos]) {
            pos += 1;
        }
        if !extract || pos == b.len() {
            return (String::new(), input[pos..].to_string());
        }
        // The opening tag: a mismatch means no block (all content); the text ending inside the
        // tag waits for more (nothing yet).
        let tag = self.start.as_bytes();
        for (i, &t) in tag.iter().enumerate() {
            match b.get(pos + i) {
                None => return (String::new(), String::new()),
                Some(&c) if c != t => return (String::new(), input[pos..].to_string()),
                Some(_) => {}
            }
        }
        pos += tag.len();
        pos = skip_optional(b, pos, self.start_trailing.as_bytes());
        let begin = pos;
        // until(end): stops at the closing tag, or at a start of it cut off by the end.
        let end = self.end.as_str();
        let mut stop = None;
        for (i, _) in input[begin..].char_indices() {
            let rest = &input[begin + i..];
            if rest.starts_with(end) {
                stop = Some((begin + i, true));
                break;
            }
            if end.starts_with(rest) {
                stop = Some((begin + i, false));
                break;
            }
        }
        let reasoning = |until: usize| {
            let r = &input[begin..until];
            // llama.cpp drops a reasoning of whitespace only (its own four characters).
            if r.bytes().all(|c| matches!(c, b' ' | b'\n' | b'\r' | b'\t')) {
                String::new()
            } else {
                r.to_string()
            }
        };
        match stop {
            None => (reasoning(input.len()), String::new()),
            Some((at, false)) => (reasoning(at), String::new()),
            Some((at, true)) => {
                let after = skip_optional(b, at + end.len(), self.end_trailing.as_bytes());
                (reasoning(at), input[after..].to_string())
            }
        }
    }
}

/// `optspace`'s optional characters: each one consumed where it comes next, skipped otherwise.
fn skip_optional(b: &[u8], mut pos: usize, optional: &[u8]) -> usize {
    for &c in optional {
        if b.get(pos) == Some(&c) {
            pos += 1;
        }
    }
    pos
}

/// A template llama.cpp answers with a dedicated parser of its own (its
/// `common_chat_try_specialized_template` and `common_chat_templates_apply_jinja`), named.
pub fn dedicated_parser(src: &str) -> Option<&'static str> {
    let has = |s: &str| src.contains(s);
    let checks: &[(bool, &'static str)] = &[
        (
            has("[SYSTEM_PROMPT]") && has("[TOOL_CALLS]") && has("[ARGS]") && !has("[CALL_ID]"),
            "Ministral",
        ),
        (has("<|channel|>"), "GPT-OSS"),
        (
            has("<atem:function_calls>") && has("<|eom|>"),
            "Muse Glimmer",
        ),
        (has(">>>all") && has(">>>${recipient}"), "Functionary v3.2"),
        (
            has("<|tool_calls_section_begin|>") && has("<|tool_call_begin|>"),
            "Kimi K2",
        ),
        (
            has("<|open|>") && has("<|close|>") && has("<|end_of_msg|>"),
            "Kimi K3",
        ),
        (
            has("<role>ASSISTANT</role>") && has("<arg_key>"),
            "Ling 3.0",
        ),
        (
            has("<|START_TEXT|>") && has("<|START_ACTION|>"),
            "Cohere2 MoE",
        ),
        (
            has("<|tool_list_start|>") && has("<|tool_list_end|>"),
            "LFM2",
        ),
        (has("List of tools: ["), "LFM2.5"),
        (has("<|role_sep|>") && has("<|message_sep|>"), "GigaChat 3"),
        (has("]<]minimax[>["), "MiniMax-M3"),
        (has("dsml_token") && has("DSML"), "DeepSeek V3.2"),
        (has("'<|tool_call>call:'"), "Gemma 4"),
        (
            has("Tool usage guidelines:") && has("<function name=\""),
            "MiniCPM5",
        ),
        (
            has("<tool_call>") && has("<function=") && has("<parameter="),
            "Qwen3-Coder",
        ),
        // Content inside markers of its own (<response>…</response>, <|CHATBOT_TOKEN|>…).
        (has("<response></response>"), "Granite"),
        (has("<|CHATBOT_TOKEN|>"), "Command R"),
    ];
    checks.iter().find(|(hit, _)| *hit).map(|(_, name)| *name)
}

/// Distinct texts for the probe conversation, found again in what the target renders.
const PROBE_USER: &str = "TIGHTWAD_PROBE_USER";
const PROBE_REASONING: &str = "TIGHTWAD_PROBE_REASONING";
const PROBE_CONTENT: &str = "TIGHTWAD_PROBE_CONTENT";

/// Learn how the target splits a thinking answer, or why the engine cannot reproduce it (then
/// its chats go to it unchanged). `/props` (the template's source), three `/apply-template`
/// calls and one chat request of one token, once per probe of the pairing.
pub async fn probe(server: &LlamaServer) -> Result<ReasoningSyntax, String> {
    let err = |e: super::BackendError| format!("probing the chat template failed: {e}");
    let template = server.props().await.map_err(err)?.chat_template;
    if let Some(name) = dedicated_parser(&template) {
        return Err(format!(
            "llama-server parses {name} chats with a dedicated parser the engine does not reproduce"
        ));
    }
    let user = json!({"role": "user", "content": PROBE_USER});
    let continued = json!([user, {"role": "assistant", "reasoning_content": PROBE_REASONING, "content": PROBE_CONTENT}]);
    let render = |body: Value| async move { server.render_chat(&body).await.map_err(err) };
    let bare = render(json!({"messages": [user], "add_generation_prompt": false})).await?;
    let with_prompt = render(json!({"messages": [user]})).await?;
    let cont = render(json!({"messages": continued})).await?;
    let unknown =
        || "the template's thinking tags could not be found by continuing a thought".to_string();
    let written = cont.strip_prefix(bare.as_str()).ok_or_else(unknown)?;
    let r = written.find(PROBE_REASONING).ok_or_else(unknown)?;
    let before = &written[..r];
    let end_raw = written[r + PROBE_REASONING.len()..]
        .strip_suffix(PROBE_CONTENT)
        .ok_or_else(unknown)?;
    let end = trim_c_space(end_raw);
    // The opening tag is the closing one without its slash (`</think>`, `[/THINK]`).
    let start = end.replacen('/', "", 1);
    let opened = trim_c_space_end(before);
    if end.is_empty() || start == end || !opened.ends_with(&start) {
        return Err(format!(
            "the template's thinking tags ({:?} … {end_raw:?}) are not a pair the engine knows",
            before
        ));
    }
    let mut syntax = ReasoningSyntax {
        start,
        start_trailing: before[opened.len()..].to_string(),
        end: end.to_string(),
        end_trailing: end_raw[trim_c_space_end(end_raw).len()..].to_string(),
        extract_by_default: true,
    };
    // The target's own split of the continued thought must be the engine's.
    let generation = generation_prompt(&with_prompt, &bare);
    let literal = &generation[..generation.len() - syntax.pending(generation).len()];
    let pending = written.strip_prefix(literal).ok_or_else(unknown)?;
    let body = json!({"messages": continued, "max_tokens": 1, "temperature": 0});
    let answer: Value = server.chat(&body).await.map_err(err)?;
    let message = &answer["choices"][0]["message"];
    let content = message["content"].as_str().unwrap_or_default();
    let reasoning = message["reasoning_content"].as_str();
    syntax.extract_by_default = reasoning.is_some();
    let (want_reasoning, want_content) = syntax.split(pending, "", reasoning.is_some());
    if reasoning.unwrap_or_default() != want_reasoning || !content.starts_with(&want_content) {
        return Err(format!(
            "the target split a probe answer as ({:?}, {content:?}), the engine would say ({want_reasoning:?}, {want_content:?}…)",
            reasoning.unwrap_or_default()
        ));
    }
    Ok(syntax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen3's tags as its template writes them (`<think>\n` … `\n</think>\n\n`).
    fn qwen() -> ReasoningSyntax {
        ReasoningSyntax {
            start: "<think>".into(),
            start_trailing: "\n".into(),
            end: "</think>".into(),
            end_trailing: "\n\n".into(),
            extract_by_default: true,
        }
    }

    fn split(pending: &str, text: &str) -> (String, String) {
        qwen().split(pending, text, true)
    }

    fn pair(r: &str, c: &str) -> (String, String) {
        (r.to_string(), c.to_string())
    }

    /// What the pinned llama-server answered for SmolLM2 with a Qwen3-like template: the
    /// reasoning keeps the newline before the closing tag, the content loses the two after it.
    #[test]
    fn a_closed_block_splits_as_llama_server_does() {
        let text = "<think>\nThe user asks 5+5. That is 10.\n</think>\n\nThe answer is 10.";
        assert_eq!(
            split("", text),
            pair("The user asks 5+5. That is 10.\n", "The answer is 10.")
        );
        // Forced open: the prompt's `<think>\n` is read before the answer.
        let forced = "The user asks 5+5. That is 10.\n</think>\n\nThe answer is 10.";
        assert_eq!(split("<think>\n", forced), split("", text));
        // Only the template's own whitespace after the closing tag is eaten.
        assert_eq!(split("", "<think>a</think>\n \nb"), pair("a", " \nb"));
        assert_eq!(split("", "<think>a</think>b"), pair("a", "b"));
    }

    #[test]
    fn no_block_is_all_content_without_leading_whitespace() {
        assert_eq!(
            split("", "\n\nHello <think>x</think>"),
            pair("", "Hello <think>x</think>")
        );
        assert_eq!(split("", "<thinking>"), pair("", "<thinking>"));
        assert_eq!(split("", "  "), pair("", ""));
    }

    /// Tags cut across tokens (or SSE chunks): nothing shows until the tag is known.
    #[test]
    fn a_tag_cut_off_by_the_end_of_the_text_waits() {
        assert_eq!(split("", "<thi"), pair("", ""));
        assert_eq!(split("", "<think>\nabc</thi"), pair("abc", ""));
        assert_eq!(split("", "<think>\nabc</thinx"), pair("abc</thinx", ""));
        assert_eq!(split("", "<think>\nabc</think>"), pair("abc", ""));
        assert_eq!(split("", "<think>\nabc</think>\n"), pair("abc", ""));
    }

    /// No closing tag before `max_tokens`: everything is reasoning, the content stays empty.
    #[test]
    fn an_unclosed_block_is_all_reasoning() {
        assert_eq!(
            split("<think>\n", "The user asks "),
            pair("The user asks ", "")
        );
        assert_eq!(split("", "<think>\n \n"), pair("", ""));
        assert_eq!(split("<think>\n", ""), pair("", ""));
    }

    /// `reasoning_format: none`: all content, a forced-open tag included.
    #[test]
    fn without_extraction_everything_is_content() {
        let s = qwen();
        assert_eq!(
            s.split("<think>\n", "abc\n</think>\n\nok", false),
            pair("", "<think>\nabc\n</think>\n\nok")
        );
        assert_eq!(s.split("", "\n x", false), pair("", "x"));
    }

    /// Every partial split is a prefix of the next, so stream deltas add up to the whole.
    #[test]
    fn partial_splits_grow_into_the_final_one() {
        let text = "<think>\nWe add. 5 and 5 € make 10.\n</think>\n\nIt is 10 €.";
        let (fr, fc) = split("", text);
        let mut last = pair("", "");
        for (i, _) in text.char_indices().chain([(text.len(), ' ')]) {
            let now = split("", &text[..i]);
            assert!(
                now.0.starts_with(&last.0) && now.1.starts_with(&last.1),
                "{i}: {last:?} → {now:?}"
            );
            assert!(fr.starts_with(&now.0) && fc.starts_with(&now.1));
            last = now;
        }
        assert_eq!(last, (fr, fc));
    }

    #[test]
    fn the_generation_prompt_and_the_pending_tag() {
        let without = "<|im_start|>user\nU<|im_end|>\n";
        let with = "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n<think>\n";
        let g = generation_prompt(with, without);
        assert_eq!(g, "<|im_start|>assistant\n<think>\n");
        assert_eq!(qwen().pending(g), "<think>\n");
        assert_eq!(qwen().pending("<|im_start|>assistant\n"), "");
    }

    #[test]
    fn dedicated_parsers_are_recognised() {
        assert_eq!(dedicated_parser("<|channel|>analysis"), Some("GPT-OSS"));
        assert_eq!(
            dedicated_parser("<tool_call> <function= <parameter="),
            Some("Qwen3-Coder")
        );
        assert_eq!(
            dedicated_parser("<think>{{ m.content }}</think><tool_call>"),
            None
        );
        assert_eq!(
            ReasoningFormat::from_name("deepseek-legacy"),
            Some(ReasoningFormat::Extract)
        );
        assert_eq!(
            ReasoningFormat::from_name("none"),
            Some(ReasoningFormat::None)
        );
        assert_eq!(ReasoningFormat::from_name("bogus"), None);
    }
}
