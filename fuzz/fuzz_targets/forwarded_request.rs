//! Request bodies on every route the proxy forwards to a target, through the steps the proxy
//! applies before forwarding (`api::forwarding`):
//! - `/v1/chat/completions` and `/v1/completions` (forwarded when only the target can serve them):
//!   `parse`, then `plan` under the configured token limits;
//! - the target's own routes (`/v1/embeddings`, `/v1/responses`, `/tokenize`, …, JSON bodies, and
//!   `/v1/audio/*`, multipart forms): `model_of`, the model that picks the pairing.
//!
//! Input: the first byte picks the route kind and the limits; the rest is the body, except for
//! the form kind, where it describes a form (see `form`) that the target builds.
//!
//! Properties: no panic; a refusal is a 4xx OpenAI error; under `max_tokens_limit` no body that
//! reaches the target and no generation asks for more than the limit, and every one is bounded;
//! the body forwarded is the client's, apart from the `max_tokens` the proxy adds; the reason in
//! `x-tightwad-served-by` is a valid header value; a form routes by its `model` field and nothing
//! else (not a file named `model`, not a file's bytes).
#![no_main]

use bytes::Bytes;
use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tightwad_serve::api::forwarding::{model_of, plan};
use tightwad_serve::api::guard::Limits;
use tightwad_serve::api::openai::{parse, Endpoint, Plan};

/// `model_of` is async (multer reads the form as a stream); a body in memory never waits.
fn model_of_sync(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    futures::executor::block_on(model_of(content_type, &Bytes::copy_from_slice(body)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 | 1 => completion(selector, body),
        2 => {
            // A JSON route: the body's `model` string, or the first pairing.
            let model = model_of_sync(Some("application/json"), body);
            let named = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("model").and_then(Value::as_str).map(str::to_string));
            assert_eq!(model, named);
            let _ = model_of_sync(None, body);
            let _ = model_of_sync(Some("multipart/form-data; boundary=b"), body);
        }
        _ => form(body),
    }
});

/// `/v1/(chat/)completions` under the limits the selector's high bits pick.
fn completion(selector: u8, body: &[u8]) {
    let endpoint = if selector % 4 == 0 {
        Endpoint::Completions
    } else {
        Endpoint::ChatCompletions
    };
    let limit = (selector & 0x10 != 0).then_some(usize::from(selector >> 5) * 8 + 1);
    let default = (selector & 0x08 != 0).then_some(16);
    let limits = Limits {
        api_keys: vec![],
        max_concurrent: 64,
        max_concurrent_per_client: 16,
        max_tokens: limit,
        default_max_tokens: default,
        remote_control: false,
    };
    let Ok((value, request)) = parse(body) else {
        return;
    };
    let job = match plan(&limits, endpoint, &request, value.clone()) {
        Ok(job) => job,
        Err(e) => {
            assert!(e.status.is_client_error(), "{}: {}", e.status, e.message);
            return;
        }
    };
    assert_eq!(job.path, endpoint.path());
    assert_eq!(job.engine_only, request.return_token_ids.unwrap_or(false));
    // The body the target would get: the client's, plus at most a `max_tokens`.
    let mut without = job.body.clone();
    let mut original = value;
    if let (Some(a), Some(b)) = (without.as_object_mut(), original.as_object_mut()) {
        a.remove("max_tokens");
        b.remove("max_tokens");
    }
    assert_eq!(without, original, "the proxy changed more than max_tokens");
    let number = |key: &str| job.body.get(key).filter(|v| !v.is_null());
    if let Some(limit) = limit {
        for key in ["max_tokens", "max_completion_tokens", "n_predict"] {
            if let Some(v) = number(key) {
                let n = v
                    .as_i64()
                    .expect("a token count the proxy let through is an integer");
                assert!(
                    (1..=limit as i64).contains(&n),
                    "`{key}` = {n} passed the limit of {limit}"
                );
            }
        }
        let bounded = number("max_tokens").is_some()
            || number("n_predict").is_some()
            || (endpoint == Endpoint::ChatCompletions && number("max_completion_tokens").is_some());
        assert!(bounded, "a forward under a limit names no token count");
    }
    match job.plan {
        Plan::Generate(generation) => {
            if let Some(limit) = limit {
                let asked = generation
                    .max_tokens
                    .expect("a generation under a limit is bounded");
                assert!(
                    (1..=limit).contains(&asked),
                    "the engine generates {asked} > {limit}"
                );
            } else if default.is_some() {
                assert!(
                    generation.max_tokens.is_some(),
                    "the default cap was not applied"
                );
            }
        }
        Plan::Forward(reason) => {
            let header = format!("passthrough; reason={}", reason.tag());
            assert!(HeaderValue::from_str(&header).is_ok(), "{header:?}");
        }
    }
}

/// A multipart form the way SDKs send `/v1/audio/transcriptions`: the input is cut at 0xFF bytes;
/// the first piece is the `model` value, each other piece a part whose first byte says its shape
/// (a file named `model`, a field whose name ends in `model`, a plain file) and whose rest is its
/// content. The `model` part goes after the part its position byte names.
fn form(description: &[u8]) {
    let mut pieces = description.split(|b| *b == 0xFF);
    let Some(model) = pieces.next() else {
        return;
    };
    let others: Vec<&[u8]> = pieces.collect();
    let boundary = "----tightwad-fuzz-7MA4YWxkTrZu0gW";
    let delimiter = format!("\r\n--{boundary}");
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    if contains(model, delimiter.as_bytes())
        || others.iter().any(|p| contains(p, delimiter.as_bytes()))
        || contains(model, b"\r\n")
    {
        return; // not a well-formed form
    }
    let at = model.first().map_or(0, |b| usize::from(*b)) % (others.len() + 1);
    let mut body = Vec::new();
    let mut part = |headers: String, content: &[u8]| {
        body.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    };
    for (i, other) in others.iter().enumerate() {
        if i == at {
            part(
                "Content-Disposition: form-data; name=\"model\"".into(),
                model,
            );
        }
        let (shape, content) = other.split_first().unwrap_or((&0, &[]));
        let headers = match shape % 3 {
            0 => "Content-Disposition: form-data; name=\"file\"; filename=\"model\"\r\nContent-Type: audio/wav",
            1 => "Content-Disposition: form-data; name=\"response_model\"",
            _ => "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav",
        };
        part(headers.into(), content);
    }
    if at >= others.len() {
        part(
            "Content-Disposition: form-data; name=\"model\"".into(),
            model,
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());

    let found = model_of_sync(
        Some(&format!("multipart/form-data; boundary={boundary}")),
        &body,
    );
    // The field's value as a client meant it: text, trimmed, of a sensible length.
    let expected = std::str::from_utf8(model)
        .ok()
        .filter(|m| m.len() <= 256)
        .map(|m| m.trim().to_string());
    assert_eq!(
        found, expected,
        "the form's model field is not what routes it"
    );
}
