//! Reader tests on synthetic headers: a small header read back, every single-byte corruption, and
//! lying lengths, which must be errors rather than allocations or panics.

use super::*;

use crate::synth::tiny_gguf;

#[test]
fn reads_a_small_header() {
    let bytes = tiny_gguf(&["<s>", "a", "b"], None);
    let summary = read_header(&bytes[..], bytes.len() as u64).expect("parse");
    assert_eq!(summary.architecture.as_deref(), Some("llama"));
    assert_eq!(summary.context_length, Some(2048));
    assert_eq!(summary.file_type.as_deref(), Some("Q8_0"));
    assert_eq!(summary.vocab_size, Some(3));
    assert_eq!(summary.parameter_count, 256 * 32000);
    let other = tiny_gguf(&["<s>", "a", "c"], None);
    let other = read_header(&other[..], other.len() as u64).expect("parse");
    assert_ne!(summary.vocab_fingerprint, other.vocab_fingerprint);
}

#[test]
fn every_single_byte_corruption_is_an_error_or_a_summary_never_a_panic() {
    let original = tiny_gguf(&["<s>", "hello", "world"], None);
    for position in 0..original.len() {
        for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
            let mut bytes = original.clone();
            bytes[position] = value;
            let _ = read_header(&bytes[..], bytes.len() as u64);
        }
    }
}

#[test]
fn lying_lengths_are_errors_not_allocations() {
    let bytes = tiny_gguf(&["a"], Some(u64::MAX / 2));
    assert!(matches!(
        read_header(&bytes[..], bytes.len() as u64),
        Err(GgufError::OverLimit { .. })
    ));
    let bytes = tiny_gguf(&["a"], Some(1 << 27));
    assert!(read_header(&bytes[..], bytes.len() as u64).is_err());
    // A key claiming 60 kB in a 100-byte file.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&(60_000u64).to_le_bytes());
    bytes.resize(100, 0);
    assert!(matches!(
        read_header(&bytes[..], 100),
        Err(GgufError::Truncated(_))
    ));
    for cut in [3, 10, 30, 60] {
        let full = tiny_gguf(&["a", "b"], None);
        assert!(
            read_header(&full[..cut], cut as u64).is_err(),
            "cut at {cut}"
        );
    }
    assert!(matches!(
        read_header(&b"GGML\0\0\0\0"[..], 8),
        Err(GgufError::BadMagic(_))
    ));
}
