//! The simulation's tokenizer: one token per byte, plus three special tokens.
//!
//! Target and draft instances share it, so the proxy's tokenizer check passes and token ids mean
//! the same on both; text round-trips exactly, which keeps the proxy's text assembly honest.

/// A token id, as llama-server numbers them.
pub type TokenId = u32;

pub const UNK: TokenId = 0;
pub const BOS: TokenId = 1;
pub const EOS: TokenId = 2;
/// Byte `b` is token `b + BYTE_OFFSET`.
pub const BYTE_OFFSET: TokenId = 3;
/// 3 special tokens + 256 bytes.
pub const N_VOCAB: u64 = 259;

pub const BOS_TEXT: &str = "<s>";
pub const EOS_TEXT: &str = "</s>";

/// The byte a token stands for, if it is a byte token.
pub fn byte_of(id: TokenId) -> Option<u8> {
    id.checked_sub(BYTE_OFFSET)
        .and_then(|b| u8::try_from(b).ok())
}

pub fn token_of_byte(b: u8) -> TokenId {
    TokenId::from(b) + BYTE_OFFSET
}

/// Tokenize as llama-server's `/tokenize` does: `add_special` puts BOS first, `parse_special`
/// turns the text `<s>` / `</s>` into their special tokens (otherwise they are plain bytes).
pub fn tokenize(text: &str, add_special: bool, parse_special: bool) -> Vec<TokenId> {
    let mut out = Vec::with_capacity(text.len() + 1);
    if add_special {
        out.push(BOS);
    }
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        if parse_special {
            if let Some(tail) = rest.strip_prefix(EOS_TEXT.as_bytes()) {
                out.push(EOS);
                rest = tail;
                continue;
            }
            if let Some(tail) = rest.strip_prefix(BOS_TEXT.as_bytes()) {
                out.push(BOS);
                rest = tail;
                continue;
            }
        }
        out.push(token_of_byte(rest[0]));
        rest = &rest[1..];
    }
    out
}

/// The bytes of one token (special tokens render as their text, as llama-server's pieces do).
pub fn token_bytes(id: TokenId) -> Vec<u8> {
    match id {
        BOS => BOS_TEXT.as_bytes().to_vec(),
        EOS => EOS_TEXT.as_bytes().to_vec(),
        _ => match byte_of(id) {
            Some(b) => vec![b],
            None => b"<unk>".to_vec(),
        },
    }
}

/// The text of several tokens together (invalid UTF-8 becomes U+FFFD, as in llama-server).
pub fn detokenize(ids: &[TokenId]) -> String {
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| token_bytes(id)).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_specials_parse_only_when_asked() {
        let text = "Grüße </s> <s>x";
        let ids = tokenize(text, true, true);
        assert_eq!(ids[0], BOS);
        assert!(ids.contains(&EOS));
        assert_eq!(detokenize(&ids[1..]), text);
        let plain = tokenize(EOS_TEXT, false, false);
        assert_eq!(plain.len(), EOS_TEXT.len());
        assert_eq!(tokenize(EOS_TEXT, false, true), vec![EOS]);
    }

    #[test]
    fn every_byte_has_a_token_inside_the_vocabulary() {
        for b in 0..=255u8 {
            let id = token_of_byte(b);
            assert!(u64::from(id) < N_VOCAB);
            assert_eq!(byte_of(id), Some(b));
        }
    }
}
