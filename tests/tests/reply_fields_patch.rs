//! The bundled patch 0005 against real servers: a `/completion` request whose `response_fields`
//! leave out `prompt` gets a reply without the context's text (the patched server no longer
//! detokenizes it), and the reply's listed fields — nested paths and missing ones included — are
//! exactly what the stock server returns for the same request. The proxy sends such requests on
//! every round, so a difference here would be a difference in every round's reply.

use serde_json::{json, Value};
use tightwad_e2e::patched::completion;
use tightwad_e2e::{env, stock_env, LlamaServer, ServerOptions, TestEnv};
use tightwad_serve::backend::llamacpp::COMPLETION_FIELDS;

async fn start(env: &TestEnv) -> LlamaServer {
    let opts = ServerOptions {
        ctx: 2048,
        ..Default::default()
    };
    LlamaServer::start(env, &env.model("target.gguf"), opts).await
}

#[tokio::test]
async fn listed_reply_fields_match_the_stock_server_and_the_prompt_text_only_comes_when_listed() {
    let patched = start(&env()).await;
    let stock = start(&stock_env()).await;
    let prompt: Vec<u64> = (300..340).collect();
    let request = |fields: Value| {
        json!({
            "prompt": prompt, "n_predict": 6, "temperature": 0, "return_tokens": true,
            "cache_prompt": false, "response_fields": fields,
        })
    };

    // What the proxy asks for on every round: the reply is those fields and nothing else.
    let proxy_fields = json!(COMPLETION_FIELDS);
    for server in [&patched, &stock] {
        let v = completion(server, request(proxy_fields.clone())).await;
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert!(!keys.contains(&"prompt"), "{v}");
        assert_eq!(v["tokens"].as_array().map(Vec::len), Some(6), "{v}");
        assert!(v["timings"]["predicted_n"].as_u64() == Some(6), "{v}");
    }

    // Nested paths, a missing path, and the prompt listed: the same reply from both builds.
    let nested = json!([
        "content",
        "tokens",
        "prompt",
        "timings/predicted_n",
        "generation_settings/n_predict",
        "no/such/field",
        "stop_type"
    ]);
    let from_patched = completion(&patched, request(nested.clone())).await;
    let from_stock = completion(&stock, request(nested)).await;
    assert_eq!(from_patched, from_stock);
    assert!(
        from_patched["prompt"]
            .as_str()
            .is_some_and(|p| !p.is_empty()),
        "listed, the prompt's text is still there: {from_patched}"
    );
    assert_eq!(
        from_patched["generation_settings/n_predict"], 6,
        "{from_patched}"
    );
    assert!(
        from_patched.get("no/such/field").is_none(),
        "{from_patched}"
    );

    // No `response_fields`: the whole reply, the prompt's text included, as before.
    let mut plain = request(json!([]));
    plain
        .as_object_mut()
        .expect("object")
        .remove("response_fields");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    let p = completion(&patched, plain.clone()).await;
    let s = completion(&stock, plain).await;
    assert!(p["prompt"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    assert_eq!(p["prompt"], s["prompt"]);
    assert_eq!(keys(&p), keys(&s));
}
