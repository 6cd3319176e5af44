//! OpenAI request bodies, exactly as `api::completions` handles them: `parse`, then `plan` for each
//! endpoint. Any input may be refused, but only with a 4xx OpenAI error, never a panic; and a
//! request the engine accepts carries only values the engine can act on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tightwad_serve::api::openai::{parse, Endpoint, Plan};

fuzz_target!(|body: &[u8]| {
    let Ok((_value, request)) = parse(body) else {
        return;
    };
    let _ = request.wants_stream();
    let _ = request.include_usage();
    for endpoint in [Endpoint::Completions, Endpoint::ChatCompletions] {
        match request.plan(endpoint) {
            Ok(Plan::Generate(generation)) => {
                let sampling = generation.sampling;
                assert!(
                    (0.0..=2.0).contains(&sampling.temperature),
                    "temperature {} reached the engine",
                    sampling.temperature
                );
                for p in [sampling.top_p, sampling.min_p].into_iter().flatten() {
                    assert!(
                        (0.0..=1.0).contains(&p),
                        "probability {p} reached the engine"
                    );
                }
                assert!(sampling.top_k.is_none_or(|k| k >= 0));
                assert!(generation.stop.len() <= 16);
            }
            Ok(Plan::Forward(reason)) => assert!(!reason.tag().is_empty()),
            Err(error) => assert!(
                error.status.is_client_error(),
                "a request body produced a {} error: {}",
                error.status,
                error.message
            ),
        }
    }
});
