//! The JSON Schema of `tightwad.toml`, from the same types the proxy reads it with, so the two
//! cannot drift. `tightwad config schema` prints it; the repository ships it as
//! `dist/schema/tightwad.schema.json` (a test keeps the two equal) for editors: taplo / Even
//! Better TOML validate a file that starts with `#:schema ./tightwad.schema.json`.

use super::ProxyConfig;

/// The schema as pretty JSON with a final newline (the shipped file's exact bytes).
pub fn proxy_schema_json() -> String {
    let schema = schemars::schema_for!(ProxyConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
