use super::*;

#[test]
fn argmax_prefers_rank_one_then_logprob() {
    let entry: HashMap<String, PromptLogprob> = serde_json::from_value(json!({
        "17": {"logprob": -3.0, "rank": 4, "decoded_token": " the"},
        "9": {"logprob": -0.1, "rank": 1, "decoded_token": " a"}
    }))
    .expect("entry parses");
    assert_eq!(argmax(&entry).map(|(id, _)| id), Some(9));
    let no_ranks: HashMap<String, PromptLogprob> = serde_json::from_value(json!({
        "3": {"logprob": -2.0}, "5": {"logprob": -1.0}, "x": {"logprob": 0.0}
    }))
    .expect("entry parses");
    assert_eq!(argmax(&no_ranks).map(|(id, _)| id), Some(5));
}

#[test]
fn partial_characters_have_no_bytes() {
    let c = completion_for(7, "\u{FFFD}", false);
    assert!(c.completion_probabilities.is_empty());
    let c = completion_for(7, " Köln", true);
    assert_eq!(c.completion_probabilities[0].bytes, " Köln".as_bytes());
    assert_eq!(c.stop_type, "eos");
}

#[test]
fn eos_from_tokenizer_info() {
    assert_eq!(
        eos_text(&json!({"eos_token": "<|im_end|>"})).as_deref(),
        Some("<|im_end|>")
    );
    assert_eq!(
        eos_text(&json!({"eos_token": {"content": "</s>"}})).as_deref(),
        Some("</s>")
    );
    assert_eq!(eos_text(&json!({"tokenizer_class": "x"})), None);
}

#[tokio::test]
async fn a_stream_without_finish_reason_is_an_error() {
    let chunks = futures::stream::iter(vec![Ok(json!({
        "choices": [{"index": 0, "text": "Hi", "token_ids": [5], "finish_reason": null}]
    }))]);
    let events: Vec<_> = to_stream_events(Role::Target, chunks).collect().await;
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].as_ref().map(|e| e.tokens.clone()).ok(),
        Some(vec![5])
    );
    assert!(matches!(events[1], Err(BackendError::Malformed { .. })));
}

#[tokio::test]
async fn last_chunk_carries_tokens_and_the_stop() {
    let chunks = futures::stream::iter(vec![
        Ok(json!({"choices": [{"index": 0, "text": "a", "token_ids": [1, 2]}]})),
        Ok(
            json!({"choices": [{"index": 0, "text": "", "token_ids": [3], "finish_reason": "stop", "stop_reason": null}]}),
        ),
        Ok(json!({"choices": [], "usage": {"completion_tokens": 3}})),
    ]);
    let events: Vec<_> = to_stream_events(Role::Target, chunks)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("all events parse");
    let events: Vec<StreamEvent> = events;
    assert_eq!(events.len(), 3);
    assert_eq!(events[1].tokens_predicted, 3);
    assert!(events[2].stop);
    assert_eq!(events[2].stop_type, "eos");
}
