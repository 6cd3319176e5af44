//! Turning accepted tokens into the text a client sees, ending exactly where the target would.
//!
//! The target alone (llama-server) appends each token's bytes to its text, holds back an incomplete
//! UTF-8 sequence and any tail that could still become a stop string, cuts the text at the first stop
//! string, and stops on an end-of-generation token or when `max_tokens` is reached. The proxy must
//! end at the same token with the same text, whatever the round boundaries were, so all of that
//! lives here, fed one token at a time.

use crate::backend::types::TokenId;

/// Tokens waiting for a character to finish before their text is released anyway (a model can
/// emit bytes that never make a character).
const MAX_UNFINISHED: usize = 32;

/// Why a generation ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Decodes a byte stream into UTF-8 text incrementally, never splitting a character.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Add bytes; return the text that is complete so far. Invalid sequences become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes are valid UTF-8 by the error's own contract.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for the next token's bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Bytes held back as the start of an unfinished character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Forget the held-back bytes (their text arrives another way, see [`Output::resolve`]).
    fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// End of stream: whatever is left is not a complete character.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Holds back text that could be the start of a stop string; reports the first stop string hit.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub struct StopCheck {
    /// Text that can be shown now.
    pub emit: String,
    /// A stop string was found; `emit` ends right before it and nothing more may follow.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher {
            stops,
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopCheck {
        self.held.push_str(text);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let emit = self.held[..pos].to_string();
            self.held.clear();
            return StopCheck {
                emit,
                stopped: true,
            };
        }
        let keep = self.longest_partial_stop_suffix();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopCheck {
            emit,
            stopped: false,
        }
    }

    /// The generation ended without a stop string: release what was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a stop string.
    fn longest_partial_stop_suffix(&self) -> usize {
        let mut best = 0;
        for (start, _) in self.held.char_indices() {
            let suffix = &self.held[start..];
            if suffix.len() <= best {
                break;
            }
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                best = suffix.len();
                break;
            }
        }
        best
    }
}

/// Everything the client sees of one generation, built token by token.
#[derive(Debug)]
pub struct Output {
    decoder: Utf8Decoder,
    stops: StopMatcher,
    max_tokens: usize,
    /// Tokens the target produced, the end-of-generation token included (llama-server counts it).
    tokens: Vec<TokenId>,
    count: usize,
    ids_complete: bool,
    /// Tokens counted but whose text is not known yet (see [`Output::push`]).
    unresolved: Vec<TokenId>,
    /// The tokens since the text last ended on a character boundary (the unresolved ones among
    /// them, last), and how many bytes of their text the client has been shown. Unresolved tokens
    /// are detokenized together with them: alone, a token that finishes a character begins with
    /// continuation bytes the server can only show as U+FFFD.
    since_boundary: Vec<TokenId>,
    shown: usize,
    pub finish: Option<FinishReason>,
}

impl Output {
    pub fn new(stops: Vec<String>, max_tokens: usize) -> Self {
        Output {
            decoder: Utf8Decoder::default(),
            stops: StopMatcher::new(stops),
            max_tokens,
            tokens: Vec::new(),
            count: 0,
            ids_complete: true,
            unresolved: Vec::new(),
            since_boundary: Vec::new(),
            shown: 0,
            finish: if max_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
        }
    }

    pub fn remaining(&self) -> usize {
        if self.finish.is_some() {
            0
        } else {
            self.max_tokens.saturating_sub(self.count)
        }
    }

    /// Add one token the target chose. Returns the text to show now. After it, check `finish`.
    ///
    /// `bytes` is `None` when the server did not report them (llama-server leaves out the details of
    /// a token whose text ends inside a UTF-8 character). Such a token, and every token after it
    /// until [`Output::resolve`] supplies their text, is counted but held back.
    pub fn push(
        &mut self,
        id: TokenId,
        bytes: Option<&[u8]>,
        is_end_of_generation: bool,
    ) -> String {
        if self.finish.is_some() {
            return String::new();
        }
        self.tokens.push(id);
        self.count += 1;
        if is_end_of_generation {
            self.finish = Some(FinishReason::Stop);
            if !self.unresolved.is_empty() {
                return String::new();
            }
            return self.flush();
        }
        let bytes = match bytes {
            Some(b) if self.unresolved.is_empty() => b,
            _ => {
                self.unresolved.push(id);
                self.since_boundary.push(id);
                if self.count >= self.max_tokens {
                    self.finish = Some(FinishReason::Length);
                }
                return String::new();
            }
        };
        let decoded = self.decoder.push(bytes);
        if self.decoder.pending_len() == 0 {
            self.at_boundary();
        } else {
            self.since_boundary.push(id);
            self.shown += decoded.len();
        }
        self.take_text(decoded)
    }

    /// Add text the target streamed by itself (target-only generation): `n_tokens` tokens whose ids
    /// are `ids` when the server reported them (llama-server skips the event of a token that ends in
    /// an incomplete UTF-8 sequence, so ids can be missing; the text never is).
    pub fn push_streamed(&mut self, ids: &[TokenId], n_tokens: usize, text: &str) -> String {
        if self.finish.is_some() {
            return String::new();
        }
        debug_assert!(self.unresolved.is_empty(), "resolve before streaming");
        self.ids_complete &= ids.len() == n_tokens;
        self.tokens.extend_from_slice(ids);
        self.count += n_tokens;
        // Streamed text is whole characters; which tokens it came from is not tracked.
        self.at_boundary();
        let decoded = self.decoder.push(text.as_bytes());
        self.take_text(decoded)
    }

    /// Take decoded text (of tokens already counted), hold back what could still become a stop
    /// string, and end at a stop string or at `max_tokens`; the text to show now.
    fn take_text(&mut self, text: String) -> String {
        let check = self.stops.push(&text);
        if check.stopped {
            self.finish = Some(FinishReason::Stop);
            return check.emit;
        }
        let mut emit = check.emit;
        if self.count >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            emit.push_str(&self.flush());
        }
        emit
    }

    /// The text so far ends on a character boundary: no token's text is partly shown.
    fn at_boundary(&mut self) {
        self.since_boundary.clear();
        self.shown = 0;
    }

    /// Tokens waiting for their text.
    pub fn unresolved(&self) -> &[TokenId] {
        &self.unresolved
    }

    /// The tokens to detokenize together to learn the [`Output::unresolved`] tokens' text: every
    /// token since the text last ended on a character boundary.
    pub fn to_detokenize(&self) -> &[TokenId] {
        if self.unresolved.is_empty() {
            &[]
        } else {
            &self.since_boundary
        }
    }

    /// The text of the [`Output::to_detokenize`] tokens, as the target detokenized them together.
    /// Text that ends inside a character (U+FFFD last) keeps its last character back and the
    /// tokens unresolved, unless `whole` (the generation ends, or too many tokens wait).
    /// (If a stop string ends inside such a block, the whole block counts as generated.)
    pub fn resolve(&mut self, text: &str, whole: bool) -> String {
        // The server's text begins with what the client was already shown of these tokens.
        let fresh = match text.get(self.shown..) {
            Some(rest) => rest,
            None => text,
        };
        let whole = whole || self.finish.is_some() || self.since_boundary.len() >= MAX_UNFINISHED;
        let done = if whole {
            fresh
        } else {
            fresh.trim_end_matches('\u{FFFD}')
        };
        if done.len() == fresh.len() {
            self.unresolved.clear();
            self.at_boundary();
        } else {
            self.shown += done.len();
        }
        // The held-back bytes belong to these tokens: their text is in `done` now.
        self.decoder.discard_pending();
        let check = self.stops.push(done);
        if check.stopped {
            self.finish = Some(FinishReason::Stop);
            return check.emit;
        }
        let mut emit = check.emit;
        if self.finish.is_some() {
            emit.push_str(&self.flush());
        }
        emit
    }

    /// Number of tokens generated so far (the end-of-generation token included).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The generated token ids, when every one of them is known.
    pub fn token_ids(&self) -> Option<&[TokenId]> {
        self.ids_complete.then_some(self.tokens.as_slice())
    }

    /// End the generation for an outside reason (context full): release everything held back.
    pub fn end(&mut self, reason: FinishReason) -> String {
        if self.finish.is_some() {
            return String::new();
        }
        self.finish = Some(reason);
        self.flush()
    }

    fn flush(&mut self) -> String {
        let tail = self.decoder.finish();
        let mut text = self.stops.push(&tail).emit;
        text.push_str(&self.stops.finish());
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_held_until_complete() {
        let mut d = Utf8Decoder::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(d.push(&euro[..1]), "");
        assert_eq!(d.push(&euro[1..2]), "");
        assert_eq!(d.push(&euro[2..]), "€");
        assert_eq!(d.push(b"ok"), "ok");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        assert_eq!(d.push(&[0xE2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_string_across_tokens_cuts_the_text() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(
            m.push("hello E"),
            StopCheck {
                emit: "hello ".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("N"),
            StopCheck {
                emit: "".into(),
                stopped: false
            }
        );
        assert_eq!(
            m.push("D and more"),
            StopCheck {
                emit: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn a_false_start_of_a_stop_string_is_released() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("xE").emit, "x");
        assert_eq!(m.push("Nx").emit, "ENx");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let mut m = StopMatcher::new(vec!["bb".into(), "a".into()]);
        let c = m.push("xbbya");
        assert!(c.stopped);
        assert_eq!(c.emit, "x");
    }

    #[test]
    fn output_stops_at_max_tokens_and_counts_tokens() {
        let mut o = Output::new(vec![], 2);
        assert_eq!(o.push(1, Some(b"a"), false), "a");
        assert_eq!(o.finish, None);
        assert_eq!(o.push(2, Some(b"b"), false), "b");
        assert_eq!(o.finish, Some(FinishReason::Length));
        assert_eq!(o.push(3, Some(b"c"), false), "");
        assert_eq!(o.token_ids(), Some(&[1, 2][..]));
    }

    #[test]
    fn end_of_generation_token_counts_but_adds_no_text() {
        let mut o = Output::new(vec![], 10);
        o.push(5, Some(b"hi"), false);
        assert_eq!(o.push(2, Some(b""), true), "");
        assert_eq!(o.finish, Some(FinishReason::Stop));
        assert_eq!(o.token_ids(), Some(&[5, 2][..]));
    }

    #[test]
    fn streamed_text_with_missing_ids_counts_tokens_but_hides_ids() {
        let mut o = Output::new(vec![], 3);
        assert_eq!(o.push(1, Some(b"a"), false), "a");
        assert_eq!(o.push_streamed(&[7], 2, "€"), "€");
        assert_eq!(o.count(), 3);
        assert_eq!(o.finish, Some(FinishReason::Length));
        assert_eq!(o.token_ids(), None);
    }

    #[test]
    fn tokens_without_bytes_wait_for_their_text() {
        let mut o = Output::new(vec!["b!".into()], 10);
        assert_eq!(o.push(1, Some(b"a"), false), "a");
        assert_eq!(o.push(2, None, false), "");
        assert_eq!(o.push(3, Some(b"x"), false), "");
        assert_eq!(o.unresolved(), &[2, 3]);
        assert_eq!(o.to_detokenize(), [2, 3]);
        assert_eq!(o.resolve("€b", false), "€");
        assert_eq!(o.push(4, Some(b"!"), false), "");
        assert_eq!(o.finish, Some(FinishReason::Stop));
        assert_eq!(o.count(), 4);
    }

    #[test]
    fn a_token_without_bytes_that_finishes_a_character_is_detokenized_with_its_start() {
        // "意" is E6 84 8F: token 1 is "，" plus its first byte, token 2 (text unknown) the other
        // two bytes plus "味". Detokenized alone, token 2 would begin with continuation bytes.
        let mut o = Output::new(vec![], 10);
        let mut first = "，".as_bytes().to_vec();
        first.push(0xE6);
        assert_eq!(o.push(1, Some(&first), false), "，");
        assert_eq!(o.push(2, None, false), "");
        assert_eq!(o.to_detokenize(), [1, 2]);
        // The server's text of tokens 1 and 2 together.
        assert_eq!(o.resolve("，意味", false), "意味");
        assert_eq!(o.push(3, Some("。".as_bytes()), false), "。");
        assert!(o.to_detokenize().is_empty());
    }

    #[test]
    fn a_character_spread_over_three_known_tokens_keeps_all_three_for_the_fourth() {
        // "😀" is F0 9F 98 80, one byte per token; the fourth token's text is unknown.
        let mut o = Output::new(vec![], 10);
        assert_eq!(o.push(1, Some(b"a\xF0"), false), "a");
        assert_eq!(o.push(2, Some(b"\x9F"), false), "");
        assert_eq!(o.push(3, Some(b"\x98"), false), "");
        assert_eq!(o.push(4, None, false), "");
        assert_eq!(o.to_detokenize(), [1, 2, 3, 4]);
        assert_eq!(o.resolve("a😀!", false), "😀!");
    }

    #[test]
    fn tokens_that_end_a_character_leave_nothing_to_detokenize_again() {
        let mut o = Output::new(vec![], 10);
        assert_eq!(o.push(1, Some(b"\xE2\x82"), false), "");
        assert_eq!(o.push(2, Some(b"\xAC ok"), false), "€ ok");
        assert_eq!(o.push(3, None, false), "");
        assert_eq!(o.to_detokenize(), [3]);
        assert_eq!(o.resolve("!", false), "!");
    }

    #[test]
    fn text_that_ends_inside_a_character_keeps_it_back_until_a_later_token_finishes_it() {
        // Tokens 1-3 (text unknown) are "ab" and the first two bytes of "意" (E6 84 8F); token 4
        // (unknown too) brings the last byte and "味".
        let mut o = Output::new(vec![], 10);
        assert_eq!(o.push(1, None, false), "");
        assert_eq!(o.push(2, None, false), "");
        assert_eq!(o.push(3, None, false), "");
        assert_eq!(o.resolve("ab\u{FFFD}", false), "ab");
        assert_eq!(o.unresolved(), &[1, 2, 3]);
        assert_eq!(o.push(4, Some("x".as_bytes()), false), "");
        assert_eq!(o.to_detokenize(), [1, 2, 3, 4]);
        assert_eq!(o.resolve("ab意味", false), "意味");
        assert!(o.unresolved().is_empty());
        assert_eq!(o.push(5, Some(b"!"), false), "!");
    }

    #[test]
    fn an_unfinished_character_is_released_as_the_server_shows_it_when_the_answer_ends() {
        let mut o = Output::new(vec![], 2);
        assert_eq!(o.push(1, Some(b"a"), false), "a");
        assert_eq!(o.push(2, None, false), "");
        assert_eq!(o.finish, Some(FinishReason::Length));
        assert_eq!(o.resolve("\u{FFFD}", false), "\u{FFFD}");
    }

    #[test]
    fn held_back_stop_prefix_is_released_at_the_length_limit() {
        let mut o = Output::new(vec!["STOP".into()], 2);
        assert_eq!(o.push(1, Some(b"a"), false), "a");
        assert_eq!(o.push(2, Some(b"ST"), false), "ST");
        assert_eq!(o.finish, Some(FinishReason::Length));
    }
}
