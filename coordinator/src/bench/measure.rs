//! The measuring: every prompt sent to the target directly and through the proxy, alternating
//! after a warm-up, each primed into the prompt cache first.

use std::time::Instant;

use serde_json::{json, Value};

use super::{
    stats_delta, BenchError, BenchPrompt, BenchReport, CompareConfig, Environment, Measurement,
    PromptResult, Speculation, Totals,
};

/// Which side a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Direct,
    Proxy,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Direct => "target (direct)",
            Side::Proxy => "proxy",
        }
    }
}

struct Client {
    http: reqwest::Client,
    config: CompareConfig,
}

impl Client {
    fn new(config: CompareConfig) -> Result<Self, BenchError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| BenchError::Request {
                side: "client",
                url: String::new(),
                detail: e.to_string(),
            })?;
        Ok(Client { http, config })
    }

    fn base(&self, side: Side) -> &str {
        match side {
            Side::Direct => &self.config.target_url,
            Side::Proxy => &self.config.proxy_url,
        }
    }

    /// One greedy chat completion, timed from sending to the last byte of the reply.
    async fn measure(&self, side: Side, prompt: &BenchPrompt) -> Result<Measurement, BenchError> {
        tokio::time::sleep(self.config.pause).await;
        self.chat(side, prompt, self.config.max_tokens).await
    }

    /// Put the prompt into the target's prompt cache with a one-token request, so that neither
    /// side's first measured request pays prompt processing the other side then skips (whichever
    /// went first would otherwise be charged for both). Likewise every server in
    /// [`CompareConfig::prime_also`], whose cache the proxy side would otherwise fill on its clock.
    async fn prime(&self, prompt: &BenchPrompt) -> Result<(), BenchError> {
        self.chat(Side::Direct, prompt, 1).await?;
        for base in &self.config.prime_also {
            self.chat_at(Side::Direct, base.trim_end_matches('/'), prompt, 1)
                .await?;
        }
        Ok(())
    }

    async fn chat(
        &self,
        side: Side,
        prompt: &BenchPrompt,
        max_tokens: u32,
    ) -> Result<Measurement, BenchError> {
        self.chat_at(side, self.base(side), prompt, max_tokens)
            .await
    }

    async fn chat_at(
        &self,
        side: Side,
        base: &str,
        prompt: &BenchPrompt,
        max_tokens: u32,
    ) -> Result<Measurement, BenchError> {
        let url = format!("{base}/v1/chat/completions");
        let body = json!({
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt.prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": false,
        });
        let request_error = |e: reqwest::Error| BenchError::Request {
            side: side.name(),
            url: url.clone(),
            detail: e.to_string(),
        };
        let started = Instant::now();
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(request_error)?;
        let seconds = started.elapsed().as_secs_f64();
        if !status.is_success() {
            return Err(BenchError::Status {
                side: side.name(),
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| BenchError::Malformed {
            side: side.name(),
            url: url.clone(),
            what: "a JSON body",
        })?;
        let completion_tokens = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| BenchError::Malformed {
                side: side.name(),
                url: url.clone(),
                what: "usage.completion_tokens",
            })?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let speculation = v
            .get("tightwad")
            .and_then(|t| serde_json::from_value::<Speculation>(t.clone()).ok());
        Ok(Measurement {
            seconds,
            completion_tokens,
            text,
            speculation,
        })
    }

    /// The pairing's counters from `/v1/tightwad/stats`, or `None` if the proxy has none.
    async fn stats(&self) -> Option<Value> {
        let url = format!("{}/v1/tightwad/stats", self.config.proxy_url);
        let v: Value = self.http.get(url).send().await.ok()?.json().await.ok()?;
        let pairings = v.get("pairings")?.as_array()?;
        pairings
            .iter()
            .find(|p| p.get("pairing").and_then(Value::as_str) == Some(self.config.model.as_str()))
            .or_else(|| pairings.first())
            .cloned()
    }
}

/// Measure every prompt direct and through the proxy, alternating, after a warm-up.
pub async fn compare(config: CompareConfig) -> Result<BenchReport, BenchError> {
    compare_with_progress(config, |_, _, _| {}).await
}

/// [`compare`], calling `on_prompt(done, total, next_category)` before each prompt and once at
/// the end (`done == total`), so a CLI can show progress.
pub async fn compare_with_progress(
    config: CompareConfig,
    mut on_prompt: impl FnMut(usize, usize, &str),
) -> Result<BenchReport, BenchError> {
    if config.prompts.is_empty() {
        return Err(BenchError::Empty("the prompt set is empty".into()));
    }
    if config.repeats == 0 {
        return Err(BenchError::Empty("--repeats must be at least 1".into()));
    }
    let client = Client::new(config.clone())?;
    for i in 0..config.warmup as usize {
        let prompt = &config.prompts[i % config.prompts.len()];
        client.measure(Side::Direct, prompt).await?;
        client.measure(Side::Proxy, prompt).await?;
    }
    let stats_before = client.stats().await;
    let mut results = Vec::with_capacity(config.prompts.len());
    for (i, prompt) in config.prompts.iter().enumerate() {
        on_prompt(i, config.prompts.len(), &prompt.category);
        let mut direct = Vec::new();
        let mut proxied = Vec::new();
        client.prime(prompt).await?;
        for _ in 0..config.repeats {
            direct.push(client.measure(Side::Direct, prompt).await?);
            proxied.push(client.measure(Side::Proxy, prompt).await?);
        }
        let result = PromptResult::from_measurements(prompt, &direct, &proxied);
        tracing::info!(
            category = %result.category,
            direct_tok_s = result.direct_tok_s,
            proxy_tok_s = result.proxy_tok_s,
            speedup = result.speedup,
            identical = result.identical,
            "measured"
        );
        results.push(result);
    }
    on_prompt(config.prompts.len(), config.prompts.len(), "done");
    let stats_after = client.stats().await;
    let proxy_stats = match (&stats_before, &stats_after) {
        (Some(b), Some(a)) => Some(stats_delta(b, a)),
        _ => None,
    };
    Ok(BenchReport {
        proxy: config.proxy_url.clone(),
        target: config.target_url.clone(),
        model: config.model.clone(),
        max_tokens: config.max_tokens,
        repeats: config.repeats,
        warmup: config.warmup,
        environment: Environment::detect(),
        totals: Totals::of(&results),
        prompts: results,
        proxy_stats,
    })
}
