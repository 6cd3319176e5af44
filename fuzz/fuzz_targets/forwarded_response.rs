//! The target's replies to forwarded requests as the proxy relays them (`api::forwarding`'s
//! `Contract` and `SseEvents`, what `relay::forwarded` runs): a whole JSON reply, a streamed reply
//! cut into network chunks anywhere, and an error reply.
//!
//! Input: the first byte picks the kind, the endpoint, the reason and (for streams) where TCP
//! cuts the body; the second byte is the status of an error reply; the rest is the target's body.
//!
//! Properties: no panic; a whole reply that is a JSON object (not an error) carries the pairing's
//! `model` and the `tightwad` object; a stream's rewritten bytes do not depend on where it was
//! cut, and every rewritten event names the pairing's model and has errors in OpenAI's shape;
//! an error reply becomes a 4xx/5xx OpenAI error with a code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tightwad_serve::api::forwarding::{Contract, SseEvents};
use tightwad_serve::api::openai::Endpoint;
use tightwad_serve::engine::ForwardReason;

const PAIRING: &str = "llama-70b";

fn contract(selector: u8) -> Contract {
    let endpoint = if selector & 0x04 == 0 {
        Endpoint::ChatCompletions
    } else {
        Endpoint::Completions
    };
    let reason = match (selector >> 3) % 4 {
        0 => ForwardReason::field("tools"),
        1 => ForwardReason::NoDrafter,
        2 => ForwardReason::SpeculationOff,
        _ => ForwardReason::NonTextContent,
    };
    Contract::new(PAIRING.to_string(), endpoint, &reason)
}

/// An OpenAI error body: `{"error": {"message": str, "type": str, "code": str, …}}`.
fn assert_openai_error(v: &Value) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "no message: {v}");
    assert!(e["type"].is_string(), "no type: {v}");
    assert!(e["code"].is_string(), "no code: {v}");
}

/// The stream rewritten with the body delivered in `chunks`.
fn relay_stream(contract: &Contract, chunks: &[&[u8]]) -> Vec<u8> {
    let mut events = SseEvents::default();
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend(events.push(chunk, contract));
    }
    out.extend(events.finish());
    out
}

fuzz_target!(|data: &[u8]| {
    let [selector, status, body @ ..] = data else {
        return;
    };
    let contract = contract(*selector);
    match selector % 4 {
        0 => {
            // A whole reply (relayed as is when it is not a JSON object).
            let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            if !v.is_object() {
                return;
            }
            let was_error = v.get("error").is_some();
            contract.whole(&mut v);
            if !was_error {
                assert_eq!(v["model"], PAIRING);
                assert_eq!(v["tightwad"]["served_by"], "passthrough");
            }
        }
        1 | 2 => {
            let whole = relay_stream(&contract, &[body]);
            let step = usize::from(*status % 16) + 1;
            let chunks: Vec<&[u8]> = body.chunks(step).collect();
            let cut = relay_stream(&contract, &chunks);
            assert_eq!(
                String::from_utf8_lossy(&whole),
                String::from_utf8_lossy(&cut),
                "the same stream relayed differently when cut every {step} bytes"
            );
            // Every complete event the proxy rewrote speaks for the pairing.
            let text = String::from_utf8_lossy(&whole);
            let complete = text.rfind("\n\n").map_or("", |end| &text[..end]);
            for line in complete.lines() {
                let Some(payload) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(payload.trim_start()) else {
                    continue;
                };
                if !v.is_object() {
                    continue;
                }
                if v.get("error").is_some() {
                    assert_openai_error(&v);
                } else if v.get("model").is_some() {
                    assert_eq!(v["model"], PAIRING, "{line}");
                }
            }
        }
        _ => {
            // An error reply with the status the target sent (4xx/5xx).
            let status = 400 + u16::from(*status) % 200;
            let error = contract.error(status, body);
            assert!(
                error.status.is_client_error() || error.status.is_server_error(),
                "{}",
                error.status
            );
            assert!(error.code.is_some());
            assert_openai_error(&error.body());
        }
    }
});
