//! The target's token pieces (the bytes each token id adds to the text), learned from its own
//! answers.
//!
//! Why: a one-pass verification needs the text of the tokens it returns. Asking llama-server for
//! it with `n_probs` makes the server compute a softmax over the whole vocabulary for every
//! returned token and send the details back, a cost paid on every round of a fast target. The
//! text each token id stands for never changes, so the proxy learns it once: from rounds that did
//! ask (`n_probs` 1), and from the `content` of rounds that did not, where all returned tokens but
//! one are known — the one token the proxy cannot know in advance is the target's own next token,
//! and its piece is what `content` holds beyond the known ones. A round whose draft holds a token
//! not learnt yet asks with `n_probs` again.
//!
//! Invariant: a piece is learnt only from the server's own bytes (the `bytes` of its token
//! details) or from a `content` that is valid UTF-8 without replacement characters and begins and
//! ends with exactly the known pieces, so a learnt piece is always the server's piece.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::backend::TokenId;

/// Pieces kept at most: more than any vocabulary in use (Gemma's is 262 144), so a server that
/// sends nonsense ids cannot make the map grow without end.
const MAX_PIECES: usize = 1 << 19;

/// Token id → the bytes the target's detokenizer gives it, shared by a pairing's requests.
#[derive(Debug, Default)]
pub struct TokenPieces {
    known: Mutex<HashMap<TokenId, Arc<[u8]>>>,
}

impl TokenPieces {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenId, Arc<[u8]>>> {
        // The map holds plain bytes; a panic elsewhere cannot leave it half-written.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every one of `tokens` has a known piece (then a verification of them as a draft
    /// can leave out `n_probs`).
    pub fn knows_all(&self, tokens: &[TokenId]) -> bool {
        let known = self.lock();
        tokens.iter().all(|t| known.contains_key(t))
    }

    /// Remember the server's own bytes for `id`.
    pub fn learn(&self, id: TokenId, bytes: &[u8]) {
        let mut known = self.lock();
        if known.len() < MAX_PIECES || known.contains_key(&id) {
            known.insert(id, bytes.into());
        }
    }

    /// The piece of each of `tokens`, which the server reported together as `content`: the known
    /// ones, and one unknown token derived from `content` (and learnt). `None` for a token whose
    /// piece cannot be known (two or more unknown, or `content` lost bytes to U+FFFD because the
    /// text ends inside a character); then every token's bytes are `None` where the known pieces
    /// and `content` disagree, so nothing wrong is ever used.
    pub fn pieces_of(&self, tokens: &[TokenId], content: &str) -> Vec<Option<Arc<[u8]>>> {
        let mut pieces: Vec<Option<Arc<[u8]>>> = {
            let known = self.lock();
            tokens.iter().map(|t| known.get(t).cloned()).collect()
        };
        let unknown: Vec<usize> = (0..tokens.len()).filter(|&i| pieces[i].is_none()).collect();
        if content.contains('\u{FFFD}') || unknown.len() > 1 {
            // `content` cannot check or complete them; known pieces stand on their own.
            return pieces;
        }
        let text = content.as_bytes();
        let split = unknown.first().copied().unwrap_or(tokens.len());
        let (head, tail) = (joined(&pieces[..split]), joined(&pieces[split..]));
        let consistent = text.len() >= head.len() + tail.len()
            && text.starts_with(&head)
            && text.ends_with(&tail);
        if !consistent {
            // The server's text is not what the known pieces say: trust neither for this round
            // (the engine then asks the server for the text of these tokens).
            return vec![None; tokens.len()];
        }
        match unknown.first() {
            Some(&i) => {
                let piece: Arc<[u8]> = text[head.len()..text.len() - tail.len()].into();
                self.learn(tokens[i], &piece);
                pieces[i] = Some(piece);
            }
            None if text.len() != head.len() + tail.len() => return vec![None; tokens.len()],
            None => {}
        }
        pieces
    }
}

/// The known pieces among `pieces`, one after the other.
fn joined(pieces: &[Option<Arc<[u8]>>]) -> Vec<u8> {
    pieces
        .iter()
        .flatten()
        .flat_map(|p| p.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(p: &Option<Arc<[u8]>>) -> Option<&[u8]> {
        p.as_deref()
    }

    #[test]
    fn the_one_unknown_token_is_what_content_holds_beyond_the_known_pieces() {
        let pieces = TokenPieces::new();
        pieces.learn(1, b" the");
        pieces.learn(3, b" dog");
        let got = pieces.pieces_of(&[1, 2, 3], " the lazy dog");
        assert_eq!(
            got.iter().map(bytes).collect::<Vec<_>>(),
            [Some(&b" the"[..]), Some(b" lazy"), Some(b" dog")]
        );
        // Learnt: the next round knows it without `content`'s help.
        assert!(pieces.knows_all(&[1, 2, 3]));
        assert_eq!(
            bytes(&pieces.pieces_of(&[2], " lazy")[0]),
            Some(&b" lazy"[..])
        );
    }

    #[test]
    fn a_token_that_adds_no_text_is_learnt_as_empty() {
        let pieces = TokenPieces::new();
        pieces.learn(1, b"Hi");
        let got = pieces.pieces_of(&[1, 2], "Hi");
        assert_eq!(bytes(&got[1]), Some(&b""[..]));
    }

    #[test]
    fn two_unknown_tokens_stay_unknown_and_nothing_is_learnt() {
        let pieces = TokenPieces::new();
        let got = pieces.pieces_of(&[7, 8], "ab");
        assert!(got.iter().all(Option::is_none));
        assert!(!pieces.knows_all(&[7]) && !pieces.knows_all(&[8]));
    }

    #[test]
    fn content_that_ends_inside_a_character_teaches_nothing() {
        let pieces = TokenPieces::new();
        pieces.learn(1, b"a");
        // The server replaced an incomplete UTF-8 sequence: the raw bytes are lost.
        let got = pieces.pieces_of(&[1, 2], "a\u{FFFD}");
        assert_eq!(bytes(&got[0]), Some(&b"a"[..]));
        assert!(got[1].is_none());
        assert!(!pieces.knows_all(&[2]));
    }

    #[test]
    fn bytes_of_a_split_character_are_learnt_when_the_content_completes_it() {
        // "é" is C3 A9; token 2 is its first byte (known), token 3 the second (unknown).
        let pieces = TokenPieces::new();
        pieces.learn(2, &[0xC3]);
        let got = pieces.pieces_of(&[2, 3], "é");
        assert_eq!(bytes(&got[1]), Some(&[0xA9][..]));
    }

    #[test]
    fn content_that_contradicts_the_known_pieces_is_trusted_for_nothing() {
        let pieces = TokenPieces::new();
        pieces.learn(1, b"cat");
        let got = pieces.pieces_of(&[1, 2], "dog!");
        assert!(got.iter().all(Option::is_none));
        assert!(!pieces.knows_all(&[2]));
        // All known but the text is longer than their pieces: also a contradiction.
        pieces.learn(2, b"!");
        assert!(pieces
            .pieces_of(&[1, 2], "cat!?")
            .iter()
            .all(Option::is_none));
    }
}
