//! JSON replies of llama-server as the proxy reads them: `/completion` (one result, or a list for
//! multi-prompt verification), a stream event, `/props`, `/tokenize`-shaped values, and the
//! Prometheus text of `/metrics`. Malformed replies must be errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tightwad_serve::backend::llamacpp::{parse_metric, Props};
use tightwad_serve::backend::types::{Completion, StreamEvent};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Completion>(data);
    let _ = serde_json::from_slice::<Vec<Completion>>(data);
    let _ = serde_json::from_slice::<StreamEvent>(data);
    if let Ok(props) = serde_json::from_slice::<Props>(data) {
        let _ = props.eos_token();
    }
    // `next_token_many` goes through a `Value` first and converts each element.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let serde_json::Value::Array(items) = value {
            for item in items {
                let _ = serde_json::from_value::<Completion>(item);
            }
        } else {
            let _ = serde_json::from_value::<Completion>(value);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_metric(text, "llamacpp:n_decode_total");
    }
});
