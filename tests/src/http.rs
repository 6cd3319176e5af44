//! HTTP client helpers every test uses against a proxy or a server: JSON posts, and streamed (SSE)
//! responses read whole, part-way, or event by event.

use std::time::Duration;

use serde_json::Value;

/// Merge the keys of `extra` (an object) into `body`.
pub fn merge(body: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (body, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// GET a JSON body (a test's read of stats, `/props`, `/slots`, …); any failure is the test's.
pub async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: no JSON: {e}"))
}

/// POST JSON and return (status, parsed body); a body that is not JSON is returned as a string.
pub async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("response body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// A streamed request read part-way: the response to read on, and the SSE text so far. Tests that
/// break something mid-answer (kill a server, send a signal) start one, act, then finish it.
pub struct OpenStream {
    pub resp: reqwest::Response,
    pub body: String,
}

impl OpenStream {
    /// POST `request` to `url` and read until `events` `data:` events have arrived.
    pub async fn start(url: &str, request: &Value, events: usize) -> OpenStream {
        let mut resp = reqwest::Client::new()
            .post(url)
            .json(request)
            .send()
            .await
            .expect("stream starts");
        let mut body = String::new();
        while body.matches("data:").count() < events {
            let chunk = resp.chunk().await.expect("chunk").expect("more data");
            body.push_str(&String::from_utf8_lossy(&chunk));
        }
        OpenStream { resp, body }
    }

    /// Read the rest of the stream; the whole SSE text.
    pub async fn finish(mut self) -> String {
        while let Some(chunk) = self.resp.chunk().await.expect("the stream continues") {
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
        self.body
    }
}

/// The token ids of a streamed completion's body (raw SSE text): the final chunk carries them.
pub fn stream_token_ids(body: &str) -> Vec<u64> {
    body.split("\n\n")
        .filter_map(|e| e.trim_start().strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c["choices"][0]["token_ids"].as_array().cloned())
        .unwrap_or_else(|| panic!("no chunk carries token_ids in {body}"))
        .iter()
        .filter_map(Value::as_u64)
        .collect()
}

/// A streamed response read as it arrives: the raw text so far and its `data:` payloads.
pub struct SseRead {
    pub response: reqwest::Response,
    pub body: String,
}

impl SseRead {
    pub async fn open(client: &reqwest::Client, url: &str, request: &Value) -> SseRead {
        let response = client
            .post(url)
            .json(request)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(response.status(), 200, "stream refused");
        SseRead {
            response,
            body: String::new(),
        }
    }

    /// Read until at least `count` events have arrived (panics if the stream ends first).
    pub async fn read_events(&mut self, count: usize) {
        while self.events().len() < count {
            let chunk = self
                .response
                .chunk()
                .await
                .expect("stream readable")
                .unwrap_or_else(|| panic!("stream ended after: {}", self.body));
            self.body.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Read to the end; `Err` with what arrived if that takes longer than `limit` (a hang).
    pub async fn read_to_end(&mut self, limit: Duration) -> Result<(), String> {
        let finished = tokio::time::timeout(limit, async {
            while let Ok(Some(chunk)) = self.response.chunk().await {
                self.body.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await;
        finished.map_err(|_| format!("no end after {limit:?}; so far: {}", self.body))
    }

    /// The `data:` payloads of the complete events so far.
    pub fn events(&self) -> Vec<String> {
        sse_payloads(&self.body)
    }
}

/// The `data:` payloads of an SSE body's complete events (`[DONE]` included).
pub fn sse_payloads(body: &str) -> Vec<String> {
    let complete = match body.rfind("\n\n") {
        Some(end) => &body[..end],
        None => return vec![],
    };
    complete
        .split("\n\n")
        .filter_map(|e| {
            let data: Vec<&str> = e
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The token ids of a streamed response (`return_token_ids: true`: the final chunk carries them).
pub fn streamed_token_ids(events: &[String]) -> Option<Vec<u64>> {
    events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c["choices"][0]["token_ids"].as_array().cloned())
        .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
}

/// The `tightwad` object of a streamed response (on its final chunk).
pub fn streamed_tightwad(events: &[String]) -> Option<Value> {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .find_map(|c| c.get("tightwad").cloned())
}

/// The `token_ids` a proxy response carries (`return_token_ids: true`).
pub fn proxy_token_ids(v: &Value) -> Vec<u64> {
    ids(&v["choices"][0]["token_ids"], "token_ids", v)
}

/// The `tokens` a llama-server `/completion` response carries (`return_tokens: true`).
pub fn completion_tokens(v: &Value) -> Vec<u64> {
    ids(&v["tokens"], "tokens", v)
}

fn ids(list: &Value, what: &str, v: &Value) -> Vec<u64> {
    list.as_array()
        .unwrap_or_else(|| panic!("no {what} in {v}"))
        .iter()
        .map(|t| t.as_u64().expect("token id"))
        .collect()
}
