//! The scenarios of `bench-suite`. Each measures the target directly and through the proxy in the
//! same run and writes `results/<scenario>.json`; [`write_readme`] then turns every result file
//! present into `results/README.md` and the plots.
//!
//! - `sim-grid`: the SIMULATION swept over acceptance α, network RTT (through [`LanRelay`]) and
//!   target speed, with speculation pinned at the model's best `k` (compared with the analytic
//!   limit, [`crate::limit`]) and with the adaptive controller (which must never cost much);
//! - `sim-k-sweep`: the SIMULATION at one point with every `k` pinned;
//! - `real-slow-target*`, `real-fast-target*`: real llama-servers on this CPU, with and without
//!   2 ms of RTT, adaptive (the default) and pinned;
//! - `passthrough`: the proxy with no draft against the target alone (its own overhead).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tightwad_serve::config::{PairingEntry, ProxyConfig};
use tightwad_serve::engine::VerifyMode;
use tightwad_serve::server::Proxy;
use tracing::info;

use crate::bench::{compare, BenchPrompt, CompareConfig, Environment};
use crate::limit::CellModel;
use crate::llama::{LlamaEnv, RunningServer, ServerSpec};
use crate::relay::{LanRelay, LinkConfig};
use crate::results::{RealScenario, SimCellResult, SimScenario};
use crate::sim::{SimConfig, SimServer};

/// Draft speed of the simulation grid: "fixed high".
pub const SIM_DRAFT_TOK_S: f64 = 500.0;
/// Verify cost growth of the simulated target (a GPU-like target: extra batch rows are cheap).
pub const SIM_BETA: f64 = 0.05;
/// Fixed cost of each simulated completion request.
pub const SIM_REQUEST_OVERHEAD: Duration = Duration::from_millis(1);
/// The largest `k` the adaptive controller may choose in the simulation.
pub const SIM_K_CAP: usize = 8;
const SIM_SEED: u64 = 42;

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    /// A smaller grid and fewer prompts (~2.5 minutes instead of ~10).
    pub quick: bool,
    pub results_dir: PathBuf,
    /// Scenario names (prefixes) to run; empty runs all.
    pub only: Vec<String>,
    /// Simulation points measured at once. The simulated servers mostly sleep, but the proxy's
    /// own work per round is real: run several only where cores are idle (a 16-core box), else 1.
    pub jobs: usize,
    /// The real scenarios' proxies end a draft after a token below this probability
    /// (`draft_p_min`); `None`: the proxy's default.
    pub draft_p_min: Option<f64>,
    /// The real scenarios' draft servers sample on their device (`draft_backend_sampling`).
    pub draft_backend_sampling: bool,
}

impl SuiteOptions {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| scenario.starts_with(o.as_str()))
    }
}

/// A proxy served from this process until dropped.
pub struct InProcessProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl InProcessProxy {
    pub async fn start(
        target: &str,
        draft: Option<&str>,
        adaptive: bool,
        draft_tokens: usize,
        verify: VerifyMode,
    ) -> anyhow::Result<Self> {
        Self::start_entry(Self::entry(target, draft, adaptive, draft_tokens, verify)).await
    }

    /// The pairing [`InProcessProxy::start`] serves, for a caller that changes more of it.
    pub fn entry(
        target: &str,
        draft: Option<&str>,
        adaptive: bool,
        draft_tokens: usize,
        verify: VerifyMode,
    ) -> PairingEntry {
        let mut entry = PairingEntry::new(target.to_string(), draft.map(str::to_string));
        entry.adaptive = adaptive;
        entry.draft_tokens = Some(draft_tokens);
        entry.verify = verify;
        entry
    }

    /// A proxy for one pairing as given.
    pub async fn start_entry(entry: PairingEntry) -> anyhow::Result<Self> {
        let config = ProxyConfig {
            listen: "127.0.0.1:0".parse().context("loopback address")?,
            pairings: vec![entry],
            ..ProxyConfig::default()
        };
        let proxy = Proxy::bind(&config).await.context("starting the proxy")?;
        let url = format!("http://{}", proxy.local_addr().context("proxy address")?);
        let task = tokio::spawn(async move {
            if let Err(e) = proxy.serve(std::future::pending()).await {
                tracing::warn!(error = %e, "in-process proxy stopped");
            }
        });
        Ok(InProcessProxy { url, task })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// How the target verified drafts (`one_pass`, `multi_prompt`), from the proxy's stats.
    pub async fn verification(&self) -> Option<String> {
        let stats: serde_json::Value = reqwest::get(format!("{}/v1/tightwad/stats", self.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        stats["pairings"][0]["verification"]["path"]
            .as_str()
            .map(str::to_string)
    }
}

impl Drop for InProcessProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Send one request through the proxy so the controller has measured the target and some rounds.
async fn warm_up(proxy: &str, prompt: &BenchPrompt, max_tokens: u32) -> anyhow::Result<()> {
    reqwest::Client::new()
        .post(format!("{proxy}/v1/chat/completions"))
        .json(&json!({
            "model": "tightwad",
            "messages": [{"role": "user", "content": prompt.prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("warm-up request through the proxy")?;
    Ok(())
}

const SIM_PROMPT: &str = "Tell me a long story about the sea.";

/// Tokens per simulated measurement: about 6 s of the target alone, 100 to 300 tokens. The
/// analytic limits leave out each request's fixed costs (tokenization, the first round's prompt)
/// and assume the mean acceptance α; 20 to 80 tokens (an earlier setting) were 4 to 15 rounds, so
/// fixed costs and unlucky draws moved single cells by ±30% around the limit. At 100+ tokens
/// both average out and what is left is the proxy's own per-round cost.
fn sim_tokens(target_tok_s: f64) -> u32 {
    (target_tok_s * 6.0).round().clamp(100.0, 300.0) as u32
}

/// The simulated servers of one (α, RTT, speed) point, behind their relays.
struct SimPoint {
    _target: SimServer,
    _draft: SimServer,
    _relays: Vec<LanRelay>,
    target_url: String,
    draft_url: String,
    model: CellModel,
}

impl SimPoint {
    async fn start(acceptance: f64, rtt_ms: f64, target_tok_s: f64) -> anyhow::Result<Self> {
        let mut target_config = SimConfig::target(target_tok_s, SIM_BETA);
        target_config.request_overhead = SIM_REQUEST_OVERHEAD;
        // Every point draws its own agreements (same prompt, other seed), so one unlucky sequence
        // of draws does not repeat across the whole grid; the seed is fixed per point, so runs
        // repeat.
        let seed = SIM_SEED
            ^ acceptance.to_bits().rotate_left(7)
            ^ rtt_ms.to_bits().rotate_left(23)
            ^ target_tok_s.to_bits().rotate_left(41);
        let mut draft_config = SimConfig::draft(SIM_DRAFT_TOK_S, acceptance, seed);
        draft_config.request_overhead = SIM_REQUEST_OVERHEAD;
        draft_config.slots = 2;
        let target = SimServer::start_local(target_config).await?;
        let draft = SimServer::start_local(draft_config).await?;
        let link = LinkConfig::with_rtt(Duration::from_secs_f64(rtt_ms / 1e3));
        let (target_relay, target_url) = LanRelay::in_front_of(&target.url(), link).await?;
        let (draft_relay, draft_url) = LanRelay::in_front_of(&draft.url(), link).await?;
        Ok(SimPoint {
            _target: target,
            _draft: draft,
            _relays: vec![target_relay, draft_relay],
            target_url,
            draft_url,
            model: CellModel {
                target_tok_s,
                draft_tok_s: SIM_DRAFT_TOK_S,
                acceptance,
                beta: SIM_BETA,
                rtt_s: rtt_ms / 1e3,
                request_overhead_s: SIM_REQUEST_OVERHEAD.as_secs_f64(),
            },
        })
    }

    /// Measure direct vs proxy with speculation pinned at `k` or adaptive (cap `k`).
    async fn measure(&self, adaptive: bool, k: usize) -> anyhow::Result<SimCellResult> {
        let tokens = sim_tokens(self.model.target_tok_s);
        let prompt = BenchPrompt {
            category: "sim".into(),
            prompt: SIM_PROMPT.into(),
        };
        let proxy = InProcessProxy::start(
            &self.target_url,
            Some(&self.draft_url),
            adaptive,
            k,
            VerifyMode::Auto,
        )
        .await?;
        if adaptive {
            warm_up(proxy.url(), &prompt, tokens).await?;
        }
        let report = compare(CompareConfig {
            model: "tightwad".into(),
            prompts: vec![prompt],
            max_tokens: tokens,
            repeats: 1,
            warmup: 0,
            ..CompareConfig::new(proxy.url(), &self.target_url)
        })
        .await?;
        let limit_k = if adaptive {
            self.model.best_sequential_k(k)
        } else {
            k
        };
        let seq = self.model.sequential_tok_s(limit_k);
        let pipe = self.model.pipelined_tok_s(limit_k);
        let t = &report.totals;
        let r = report.prompts.first();
        Ok(SimCellResult {
            acceptance: self.model.acceptance,
            rtt_ms: self.model.rtt_s * 1e3,
            target_tok_s: self.model.target_tok_s,
            draft_tok_s: self.model.draft_tok_s,
            beta: self.model.beta,
            mode: if adaptive { "adaptive" } else { "pinned" }.into(),
            k,
            tokens: t.proxy_tokens,
            direct_tok_s: t.direct_tok_s,
            proxy_tok_s: t.proxy_tok_s,
            speedup: t.speedup,
            limit_k,
            limit_sequential_tok_s: seq,
            limit_pipelined_tok_s: pipe,
            of_sequential_limit: t.proxy_tok_s / seq,
            of_pipelined_limit: t.proxy_tok_s / pipe,
            of_sequential_limit_at_measured_acceptance: t
                .tokens_per_round
                .filter(|_| !adaptive)
                .map(|per_round| {
                    let limit = per_round / self.model.sequential_round_seconds(limit_k);
                    t.proxy_tok_s / limit
                }),
            rounds: t.rounds,
            drafted: t.drafted,
            accepted: t.accepted,
            measured_acceptance: t.acceptance,
            identical: t.identical_prompts == t.prompts,
            served_by: r.map(|r| r.served_by.clone()).unwrap_or_default(),
        })
    }
}

fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value).context("serializing results")?;
    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// (a) The simulation grid.
pub async fn sim_grid(opts: &SuiteOptions) -> anyhow::Result<SimScenario> {
    let started = Instant::now();
    let (alphas, rtts, speeds): (&[f64], &[f64], &[f64]) = if opts.quick {
        (&[0.7, 0.9], &[2.0], &[3.0, 20.0, 50.0])
    } else {
        (
            &[0.5, 0.7, 0.9],
            &[0.3, 2.0, 10.0],
            &[3.0, 10.0, 20.0, 50.0],
        )
    };
    let mut points = Vec::new();
    for &rtt_ms in rtts {
        for &target_tok_s in speeds {
            if target_tok_s < 5.0 && rtt_ms != 2.0 {
                // At 3 tok/s a token takes 333 ms: the RTT cannot matter, and these cells are
                // the suite's slowest. Measured at 2 ms only.
                continue;
            }
            for &acceptance in alphas {
                points.push((acceptance, rtt_ms, target_tok_s));
            }
        }
    }
    // Points in parallel (`jobs` at a time), results in grid order.
    let measured: Vec<anyhow::Result<Vec<SimCellResult>>> = futures::stream::iter(points)
        .map(|(acceptance, rtt_ms, target_tok_s)| async move {
            let point = SimPoint::start(acceptance, rtt_ms, target_tok_s).await?;
            let k = point.model.best_sequential_k(SIM_K_CAP);
            let mut cells = Vec::new();
            for (adaptive, k) in [(false, k), (true, SIM_K_CAP)] {
                let cell = point.measure(adaptive, k).await.with_context(|| {
                    format!("sim cell α {acceptance}, RTT {rtt_ms} ms, {target_tok_s} tok/s")
                })?;
                info!(
                    acceptance,
                    rtt_ms,
                    target_tok_s,
                    mode = %cell.mode,
                    k,
                    speedup = format!("{:.2}", cell.speedup),
                    of_limit = format!("{:.2}", cell.of_sequential_limit),
                    "sim cell"
                );
                cells.push(cell);
            }
            Ok(cells)
        })
        .buffered(opts.jobs.max(1))
        .collect()
        .await;
    let mut cells = Vec::new();
    for point in measured {
        cells.extend(point?);
    }
    Ok(SimScenario {
        name: "sim-grid".into(),
        description: "SIMULATION: sim-llama-server target and draft behind LAN relays; speculation pinned at the analytic best k, and adaptive (k ≤ 8)".into(),
        draft_tok_s: SIM_DRAFT_TOK_S,
        beta: SIM_BETA,
        request_overhead_ms: SIM_REQUEST_OVERHEAD.as_secs_f64() * 1e3,
        seconds: started.elapsed().as_secs_f64(),
        environment: Environment::detect(),
        cells,
    })
}

/// The simulation at one point with every `k` pinned.
pub async fn sim_k_sweep(opts: &SuiteOptions) -> anyhow::Result<SimScenario> {
    let started = Instant::now();
    let (alphas, ks): (&[f64], &[usize]) = if opts.quick {
        (&[0.9], &[1, 2, 4, 8])
    } else {
        (&[0.7, 0.9], &[1, 2, 3, 4, 6, 8])
    };
    let mut cells = Vec::new();
    for &acceptance in alphas {
        let point = SimPoint::start(acceptance, 2.0, 10.0).await?;
        for &k in ks {
            cells.push(point.measure(false, k).await?);
        }
    }
    Ok(SimScenario {
        name: "sim-k-sweep".into(),
        description: "SIMULATION: 10 tok/s target, 2 ms RTT, speculation pinned at each k".into(),
        draft_tok_s: SIM_DRAFT_TOK_S,
        beta: SIM_BETA,
        request_overhead_ms: SIM_REQUEST_OVERHEAD.as_secs_f64() * 1e3,
        seconds: started.elapsed().as_secs_f64(),
        environment: Environment::detect(),
        cells,
    })
}

/// A real target (and draft) measured in several variants: RTT (none or 2 ms) × adaptive/pinned.
struct RealPair<'a> {
    name: &'a str,
    /// Measured requests per prompt and side (fast targets need several: a request lasts 0.3 s).
    repeats: u32,
    /// Use the whole built-in prompt set rather than one prompt of each category.
    all_prompts: bool,
    description: &'a str,
    target_model: &'a str,
    draft_model: Option<&'a str>,
    /// (RTT in ms or loopback, adaptive, how the target verifies).
    variants: &'a [(Option<f64>, bool, VerifyMode)],
}

async fn real_pair(
    env: &LlamaEnv,
    opts: &SuiteOptions,
    pair: RealPair<'_>,
) -> anyhow::Result<Vec<RealScenario>> {
    const DRAFT_TOKENS: usize = 4;
    let target =
        RunningServer::start(env, &env.model(pair.target_model)?, &ServerSpec::target()).await?;
    let draft = match pair.draft_model {
        Some(m) => Some(RunningServer::start(env, &env.model(m)?, &ServerSpec::draft()).await?),
        None => None,
    };
    let all = crate::bench::builtin_prompts();
    // One prompt of each category (the built-in set has two of each, in pairs).
    let mut prompts: Vec<BenchPrompt> = if pair.all_prompts {
        all
    } else {
        all.iter().step_by(2).cloned().collect()
    };
    let (max_tokens, repeats) = if opts.quick {
        prompts.truncate(3);
        (32, pair.repeats.min(2))
    } else {
        (64, pair.repeats)
    };
    let mut out = Vec::new();
    for &(rtt_ms, adaptive, verify) in pair.variants {
        let started = Instant::now();
        let mut relays = Vec::new();
        let (target_url, draft_url) = match rtt_ms {
            Some(rtt) => {
                let link = LinkConfig::with_rtt(Duration::from_secs_f64(rtt / 1e3));
                let (rt, tu) = LanRelay::in_front_of(target.url(), link).await?;
                relays.push(rt);
                let du = match &draft {
                    Some(d) => {
                        let (rd, du) = LanRelay::in_front_of(d.url(), link).await?;
                        relays.push(rd);
                        Some(du)
                    }
                    None => None,
                };
                (tu, du)
            }
            None => (
                target.url().to_string(),
                draft.as_ref().map(|d| d.url().to_string()),
            ),
        };
        let mut entry = InProcessProxy::entry(
            &target_url,
            draft_url.as_deref(),
            adaptive,
            DRAFT_TOKENS,
            verify,
        );
        if let Some(p) = opts.draft_p_min {
            entry.draft_p_min = p;
        }
        entry.draft_backend_sampling = opts.draft_backend_sampling;
        let proxy = InProcessProxy::start_entry(entry).await?;
        let report = compare(CompareConfig {
            model: "tightwad".into(),
            prompts: prompts.clone(),
            max_tokens,
            repeats,
            warmup: 1,
            ..CompareConfig::new(proxy.url(), &target_url)
        })
        .await
        .with_context(|| format!("scenario {}", pair.name))?;
        let mut name = pair.name.to_string();
        if let Some(rtt) = rtt_ms {
            name.push_str(&format!("-{rtt}ms"));
        }
        if !adaptive {
            name.push_str("-pinned");
        }
        if verify == VerifyMode::MultiPrompt {
            name.push_str("-multi-prompt");
        }
        let verification = proxy.verification().await;
        info!(scenario = %name, speedup = format!("{:.2}", report.totals.speedup), "real scenario");
        out.push(RealScenario {
            name,
            description: pair.description.to_string(),
            target_model: pair.target_model.to_string(),
            draft_model: pair.draft_model.map(str::to_string),
            rtt_ms,
            adaptive,
            draft_tokens: DRAFT_TOKENS,
            verification,
            seconds: started.elapsed().as_secs_f64(),
            report,
        });
        drop(proxy);
        drop(relays);
    }
    Ok(out)
}

/// Run the selected scenarios and write their files, then the README and the plots.
pub async fn run(opts: &SuiteOptions) -> anyhow::Result<()> {
    let dir = &opts.results_dir;
    if opts.wants("sim-grid") {
        let s = sim_grid(opts).await?;
        write_json(dir, &s.name, &s)?;
    }
    if opts.wants("sim-k-sweep") {
        let s = sim_k_sweep(opts).await?;
        write_json(dir, &s.name, &s)?;
    }
    let real_wanted = ["real-slow-target", "real-fast-target", "passthrough"]
        .iter()
        .any(|s| opts.wants(s));
    if real_wanted {
        match LlamaEnv::from_env() {
            Err(e) => tracing::warn!(error = %e, "skipping the real llama-server scenarios"),
            Ok(env) => {
                let mut pairs = Vec::new();
                if opts.wants("real-slow-target") {
                    pairs.push(RealPair {
                        name: "real-slow-target",
                        repeats: 1,
                        all_prompts: false,
                        description: "bench-target.gguf (16 layers, 1 thread) with bench-draft.gguf (its first 2 layers, Q8_0, 1 thread)",
                        target_model: "bench-target.gguf",
                        draft_model: Some("bench-draft.gguf"),
                        variants: &[
                            (None, true, VerifyMode::Auto),
                            (Some(2.0), true, VerifyMode::Auto),
                            (Some(2.0), false, VerifyMode::Auto),
                            (Some(2.0), false, VerifyMode::MultiPrompt),
                        ],
                    });
                }
                if opts.wants("real-fast-target") {
                    pairs.push(RealPair {
                        name: "real-fast-target",
                        repeats: 3,
                        all_prompts: false,
                        description: "target.gguf (4×256, 1 thread) with draft.gguf (the target plus noise, 1 thread)",
                        target_model: "target.gguf",
                        draft_model: Some("draft.gguf"),
                        variants: &[
                            (None, true, VerifyMode::Auto),
                            (Some(2.0), true, VerifyMode::Auto),
                            (Some(2.0), false, VerifyMode::Auto),
                            (Some(2.0), false, VerifyMode::MultiPrompt),
                        ],
                    });
                }
                if opts.wants("passthrough") {
                    pairs.push(RealPair {
                        name: "passthrough",
                        repeats: 3,
                        all_prompts: true,
                        description: "target.gguf with no draft: the proxy's own overhead (target-only streaming)",
                        target_model: "target.gguf",
                        draft_model: None,
                        variants: &[(None, true, VerifyMode::Auto)],
                    });
                }
                for pair in pairs {
                    for s in real_pair(&env, opts, pair).await? {
                        write_json(dir, &s.name, &s)?;
                    }
                }
            }
        }
    }
    crate::report::write_readme(dir)
}
