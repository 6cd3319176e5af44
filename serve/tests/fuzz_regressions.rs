//! Inputs the fuzz targets in `fuzz/` found or probe for, kept as plain tests so they run in every
//! `cargo test` (the fuzzers themselves need cargo-fuzz and a nightly, or a bootstrapped stable,
//! compiler: `scripts/fuzz`).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tightwad_serve::backend::sse::decode_sse_chunks;
use tightwad_serve::backend::types::Role;

/// Decode `chunks` and describe each event the way `fuzz/fuzz_targets/sse_stream.rs` compares
/// them (`Debug` of the event; an error is just an error).
async fn decode(chunks: &[&[u8]]) -> Vec<Result<String, ()>> {
    let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    decode_sse_chunks(
        Role::Target,
        Duration::from_secs(5),
        futures::stream::iter(chunks),
    )
    .map(|event| event.map(|e| format!("{e:?}")).map_err(|_| ()))
    .collect()
    .await
}

/// A CRLF line ending split across two network chunks (`\r` ends one, `\n` starts the next) must
/// decode like the same bytes in one chunk. Found while writing `fuzz/fuzz_targets/sse_stream.rs`: before the fix the
/// decoder replaces CRLF chunk by chunk, so such a split leaves a lone `\r`, the blank line between
/// two events is not seen, the two merge, and the stream fails as malformed. Fixed in
/// `sse_events` (proxy/src/backend/llamacpp.rs): line ends are normalised on the whole buffer.
#[tokio::test]
async fn a_crlf_split_across_chunks_decodes_like_the_whole_body() {
    let body: &[u8] = b"data: {\"tokens\":[5]}\r\n\r\ndata: {\"tokens\":[6],\"stop\":true}\r\n\r\n";
    let whole = decode(&[body]).await;
    assert_eq!(whole.len(), 2, "{whole:?}");
    assert!(whole.iter().all(Result::is_ok), "{whole:?}");
    for cut in 1..body.len() {
        let (a, b) = body.split_at(cut);
        assert_eq!(decode(&[a, b]).await, whole, "cut at byte {cut}");
    }
}

/// A `TIGHTWAD_*` value with a non-ASCII character before a backslash inside quotes. Found by
/// `fuzz/fuzz_targets/toml_configs.rs` (`TIGHTWAD_PAIRING_DRAFTS=["httx:\u{FFFD}\\//b:1"]`):
/// figment 0.10.19 unescapes quoted values slicing at a character index as a byte index
/// (`value/escape.rs`), so the load panicked — or, with other characters, silently dropped some.
/// Fixed in `serve/src/config/layers.rs` (`refuse_values_figment_misreads`): such a value is
/// refused naming the variable and saying how to write it; the `\uXXXX` spelling it suggests
/// reads back exactly, and an unquoted value is taken verbatim.
#[test]
// figment's own signature: the jail's closure returns `figment::Result`.
#[allow(clippy::result_large_err)]
fn a_non_ascii_character_before_a_backslash_in_a_variable_is_refused_not_a_panic() {
    use tightwad_serve::config::ProxyConfig;
    figment::Jail::expect_with(|jail| {
        for (name, _) in std::env::vars() {
            if name.starts_with("TIGHTWAD_") {
                std::env::remove_var(&name);
            }
        }
        jail.create_file(
            "t.toml",
            "[[pairings]]\ntarget = \"http://127.0.0.1:8080\"\n",
        )?;
        let path = jail.directory().join("t.toml");

        jail.set_env("TIGHTWAD_PAIRING_DRAFTS", "[\"httx:\u{FFFD}\\//b:1\"]");
        let refused = ProxyConfig::load_with_env(&path)
            .expect_err("refused")
            .to_string();
        assert!(
            refused.contains("TIGHTWAD_PAIRING_DRAFTS") && refused.contains("\\uXXXX"),
            "{refused}"
        );
        // A later string of a list is unescaped on its own: its first backslash counts too.
        jail.set_env("TIGHTWAD_PAIRING_ALIASES", r#"["a\tb", "é\tb"]"#);
        jail.set_env("TIGHTWAD_PAIRING_DRAFTS", r#"["http://b:1"]"#);
        let refused = ProxyConfig::load_with_env(&path)
            .expect_err("refused")
            .to_string();
        assert!(refused.contains("TIGHTWAD_PAIRING_ALIASES"), "{refused}");

        // What the message suggests reads back exactly.
        jail.set_env("TIGHTWAD_PAIRING_ALIASES", r#"["a\tb", "\u00e9\tb"]"#);
        let loaded = ProxyConfig::load_with_env(&path).expect("the escaped spelling loads");
        assert_eq!(loaded.pairings[0].aliases, ["a\tb", "é\tb"]);
        // Non-ASCII with no backslash, and unquoted values, are untouched.
        jail.set_env("TIGHTWAD_PAIRING_ALIASES", r#"["é", "ü"]"#);
        jail.set_env("TIGHTWAD_PAIRING_DRAFT", r"http://é\x");
        let loaded = ProxyConfig::load_with_env(&path).expect("loads");
        assert_eq!(loaded.pairings[0].aliases, ["é", "ü"]);
        assert_eq!(loaded.pairings[0].draft.as_deref(), Some(r"http://é\x"));
        Ok(())
    });
}
