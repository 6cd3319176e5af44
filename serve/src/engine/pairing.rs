//! One pairing: a target server, its draft servers (or prompt lookup, or the target's own native
//! speculation), a controller per drafter, and the metrics handle. The other rooms of the engine
//! add their `impl Pairing` blocks: probing ([`super::probe`]), the request's course
//! ([`super::generate`]), the rounds ([`super::round`]), target-only streaming
//! ([`super::target_only`]), native pairing ([`super::native`]), shadow drafting ([`super::shadow`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::probe::PairingInfo;
use super::request::EngineError;
use super::{controller, drafters, path_choice};
use crate::backend::{Backend, BackendError, BackendKind, DraftOptions, Role};
use crate::metrics::{PairingMetrics, ServedBy};

/// The `draft` value that selects prompt-lookup drafting instead of a draft server.
pub const PROMPT_LOOKUP: &str = "prompt-lookup";

/// Who proposes the draft tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drafter {
    /// The draft `llama-server`.
    Server,
    /// The context's own earlier n-grams ([`lookup::propose`]).
    PromptLookup,
    /// The target's own built-in speculation (native pairing), steered per request.
    Native,
}

/// How long a draft that failed is left alone before the pairing probes it again.
pub(super) const DRAFT_RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long probed facts are trusted: servers get restarted with other models or settings.
pub(super) const REPROBE_AFTER: Duration = Duration::from_secs(60);

/// What one pairing is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct PairingConfig {
    /// The model name clients use (`model` in requests, listed in `/v1/models`).
    pub name: String,
    /// Other names clients may ask for this pairing by (config `aliases`, as llama-swap users
    /// expect): a request for an alias is served exactly like one for `name`.
    pub aliases: Vec<String>,
    pub target_url: String,
    /// A draft `llama-server` URL, or [`PROMPT_LOOKUP`] to draft from the context itself.
    pub draft_url: Option<String>,
    /// More draft servers after `draft_url` (config key `drafts`): each request goes to the one
    /// whose rounds deliver most, and a failing one hands over to the next ([`drafters`]).
    pub drafts: Vec<String>,
    /// When the draft server is down, draft from the context (prompt lookup) instead of nothing.
    pub prompt_lookup_fallback: bool,
    /// The most tokens the draft proposes per round (k), as configured; `None`: what the target's
    /// verification path pays for ([`super::draft_length`]), known once probed. Capped by the
    /// target's one-pass maximum or its slots (k + 1 for one prompt per position).
    pub draft_tokens: Option<usize>,
    /// A draft server's draft ends after a token its model gave less than this probability (the
    /// patched llama-server's `stop_p_min`; 0: drafts run to k).
    pub draft_p_min: f64,
    /// Draft servers sample on their device (llama-server's `backend_sampling`; config
    /// `draft_backend_sampling`, off by default: measured a loss with the pinned llama.cpp).
    pub draft_backend_sampling: bool,
    /// Longest wait for one target reply (a verification or a stream event).
    pub target_timeout: Duration,
    /// Longest wait for the draft; past it the stream continues target-only.
    pub draft_timeout: Duration,
    /// Never speculate while the target alone is faster than this (tokens/s), as users asked.
    pub disable_above_tok_s: Option<f64>,
    /// `false`: speculate every round with the full draft length, whatever it costs (tests,
    /// experiments).
    pub adaptive: bool,
    /// Draft the next block while the target verifies this one (needs `-np 2` on the draft):
    /// always, never, or where it measures faster ([`super::pipelining`]).
    pub pipeline: super::pipelining::Pipelining,
    /// The target runs llama.cpp's own speculation with its draft model on a remote rpc-server
    /// (native pairing): the proxy only decides per request how many tokens it may draft.
    pub native: bool,
    /// The target is a mixture-of-experts model: its controllers keep k ≤ 4 until calibration
    /// lifts the cap ([`controller::Controller::cap`]).
    pub moe: bool,
    /// Which server software the target runs (llama.cpp or vLLM).
    pub target_kind: BackendKind,
    /// Which server software the draft runs.
    pub draft_kind: BackendKind,
    /// How the target verifies drafts ([`VerifyMode`]).
    pub verify: VerifyMode,
}

impl PairingConfig {
    /// Whether a request for `model` is for this pairing: its name or one of its aliases.
    pub fn answers_to(&self, model: &str) -> bool {
        self.name == model || self.aliases.iter().any(|a| a == model)
    }

    /// How each round asks its draft server for a draft.
    pub fn draft_options(&self) -> DraftOptions {
        DraftOptions {
            p_min: self.draft_p_min,
            backend_sampling: self.draft_backend_sampling,
        }
    }
}

/// How a llama.cpp target verifies a draft.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// One sequence when the target advertises client drafts, else one prompt per position.
    #[default]
    Auto,
    /// Only one-pass verification; a target without it serves target-only (and says why).
    OnePass,
    /// One prompt per draft position (needs k + 1 target slots), even on a patched target.
    MultiPrompt,
}

/// A target server with an optional draft server, served under one model name.
pub struct Pairing {
    pub config: PairingConfig,
    pub(super) target: Backend,
    /// The draft servers, in configuration order (`draft` first, then `drafts`).
    pub(super) drafts: Vec<drafters::DraftSlot>,
    pub(super) probed: Mutex<Option<Arc<PairingInfo>>>,
    /// The last probe that failed, and when: callers that waited for it share its answer
    /// (see `Pairing::info`).
    pub(super) probe_failure: std::sync::Mutex<Option<(Instant, Arc<BackendError>)>>,
    /// The controller when no draft server drafts (prompt lookup, native pairing, target-only);
    /// each draft server has its own.
    pub(super) controller: Arc<std::sync::Mutex<controller::Controller>>,
    /// Both a draft server and native pairing configured: the native path's own controller, and
    /// the choice between the two paths per request ([`paths`]).
    pub(super) native_alternative: Option<NativeAlternative>,
    pub metrics: PairingMetrics,
    /// Requests that asked for a drafter (numbers the choices).
    pub(super) choices: AtomicU64,
    /// The draft server chosen last (`usize::MAX`: none yet): whose controller the stats show.
    pub(super) last_slot: AtomicUsize,
    /// The target's token pieces learnt from its answers (one-pass rounds then leave out
    /// `n_probs`, see [`pieces`](super::pieces)).
    pub(super) pieces: super::pieces::TokenPieces,
    /// The target (model, build) whose one-pass verification was warmed (see
    /// `probe::warm_verification`): warmed once per target, not at every re-probe.
    pub(super) verification_warmed_for: std::sync::Mutex<Option<(String, String)>>,
}

/// The second speculation path of a pairing that has a draft server and a native-pairing target.
pub(super) struct NativeAlternative {
    pub(super) controller: Arc<std::sync::Mutex<controller::Controller>>,
    pub(super) chooser: std::sync::Mutex<path_choice::PathChooser>,
}

/// Lock a controller (a poisoned lock means a panic elsewhere; the state is still plain numbers,
/// so keep using it).
pub(super) fn lock_controller(
    c: &std::sync::Mutex<controller::Controller>,
) -> std::sync::MutexGuard<'_, controller::Controller> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pairing {
    pub fn new(config: PairingConfig, metrics: PairingMetrics) -> Result<Self, BackendError> {
        let target = Backend::new(
            config.target_kind,
            Role::Target,
            &config.target_url,
            config.target_timeout,
        )?;
        let mut drafts = Vec::new();
        for url in config
            .draft_url
            .iter()
            .filter(|u| u.as_str() != PROMPT_LOOKUP)
            .chain(&config.drafts)
        {
            let server = Backend::new(config.draft_kind, Role::Draft, url, config.draft_timeout)?;
            drafts.push((url.clone(), server));
        }
        Ok(Self::with_backends(config, metrics, target, drafts))
    }

    /// A pairing over servers already made: the target, and each draft server with its URL (the
    /// engine's unit tests hand in simulated ones).
    pub(crate) fn with_backends(
        config: PairingConfig,
        metrics: PairingMetrics,
        target: Backend,
        draft_servers: Vec<(String, Backend)>,
    ) -> Self {
        // The cap until the probe says what the target takes (`Pairing::info` sets it then); no
        // round runs before that.
        let cap = config.draft_tokens.unwrap_or(controller::K_MAX);
        let make_controller = || {
            if config.adaptive && config.moe {
                controller::Controller::new(cap, config.disable_above_tok_s).for_moe_target()
            } else if config.adaptive {
                controller::Controller::new(cap, config.disable_above_tok_s)
            } else {
                controller::Controller::fixed(cap)
            }
        };
        let new_controller = || Arc::new(std::sync::Mutex::new(make_controller()));
        let drafts: Vec<drafters::DraftSlot> = draft_servers
            .into_iter()
            .map(|(url, server)| {
                let m = metrics.drafter(&url);
                drafters::DraftSlot::new(url, server, make_controller(), m)
            })
            .collect();
        let native_alternative = (config.native && !drafts.is_empty()).then(|| NativeAlternative {
            controller: new_controller(),
            chooser: Default::default(),
        });
        Pairing {
            controller: new_controller(),
            native_alternative,
            config,
            target,
            drafts,
            probed: Mutex::new(None),
            probe_failure: std::sync::Mutex::new(None),
            verification_warmed_for: std::sync::Mutex::new(None),
            metrics,
            choices: AtomicU64::new(0),
            last_slot: AtomicUsize::new(usize::MAX),
            pieces: super::pieces::TokenPieces::new(),
        }
    }

    /// The controller of draft server `slot`, or the pairing's own for `None`.
    pub(super) fn ctl(
        &self,
        slot: Option<usize>,
    ) -> &Arc<std::sync::Mutex<controller::Controller>> {
        match slot.and_then(|i| self.drafts.get(i)) {
            Some(d) => &d.controller,
            None => &self.controller,
        }
    }

    /// Run `f` on the controller of `slot` (see [`Pairing::ctl`]).
    pub(super) fn with_ctl<T>(
        &self,
        slot: Option<usize>,
        f: impl FnOnce(&mut controller::Controller) -> T,
    ) -> T {
        let mut guard = self
            .ctl(slot)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The draft server whose controller speaks for the pairing in stats: the one chosen last,
    /// else the first; `None` without draft servers.
    pub(super) fn primary_slot(&self) -> Option<usize> {
        if self.drafts.is_empty() {
            return None;
        }
        let last = self.last_slot.load(Ordering::Relaxed);
        Some(if last < self.drafts.len() { last } else { 0 })
    }

    /// A target-only measurement is the target's speed whoever drafts: every controller learns it.
    pub(super) fn record_target_only_all(&self, tokens: usize, secs: f64) {
        let now = Instant::now();
        self.with_ctl(None, |c| c.record_target_only(now, tokens, secs));
        for d in &self.drafts {
            d.with_controller(|c| c.record_target_only(now, tokens, secs));
        }
    }

    /// Pick the draft server for a request (or for the rest of one, after `failed` failed).
    pub(super) fn choose_drafter(&self, info: &PairingInfo, failed: &[usize]) -> Option<usize> {
        let usable = info.usable_drafters(failed);
        let n = self.choices.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = drafters::choose(&self.drafts, &usable, n)?;
        drafters::chosen(&self.drafts[slot], n);
        self.last_slot.store(slot, Ordering::Relaxed);
        Some(slot)
    }

    /// What naming the servers' cached prefixes saved (`None` per server that does not take them;
    /// see `backend::llamacpp::prefix`), for the stats JSON.
    pub fn cached_prefix_view(&self) -> serde_json::Value {
        let of = |b: &Backend| b.as_llamacpp().and_then(|s| s.slot_memory().stats());
        serde_json::json!({
            "target": of(&self.target),
            "drafters": self.drafts.iter().map(|d| of(&d.server)).collect::<Vec<_>>(),
        })
    }

    /// Every draft server's figures, for the stats JSON.
    pub fn drafter_views(&self) -> Vec<drafters::DrafterView> {
        let info = self.probed.try_lock().ok().and_then(|g| g.clone());
        self.drafts
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let unusable = match info.as_ref().and_then(|info| info.drafters.get(i)) {
                    Some(Err(reason)) => Some(reason.clone()),
                    Some(Ok(_)) => None,
                    None => Some("not probed yet".to_string()),
                };
                d.view(unusable, self.config.pipeline)
            })
            .collect()
    }

    pub fn target(&self) -> &Backend {
        &self.target
    }

    /// Run `f` on the controller (a poisoned lock means a panic elsewhere; the state is still
    /// plain numbers, so keep using it).
    pub(super) fn with_controller<T>(&self, f: impl FnOnce(&mut controller::Controller) -> T) -> T {
        self.with_ctl(self.primary_slot(), f)
    }

    /// With a draft server and a native-pairing target: how the two paths compare.
    pub fn paths_view(&self) -> Option<path_choice::PathsView> {
        self.native_alternative.as_ref().map(|n| {
            n.chooser
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .view()
        })
    }

    /// The path for this request when the pairing has two (`None`: it has one): the path whose
    /// controller would speculate when only one would, else the chooser's pick (both would, or
    /// neither: then the request is passed through or sampled by that path's controller).
    ///
    /// Why not always the chooser's: a path switched off serves its requests untouched and
    /// records nothing for the chooser, which kept choosing it as the path with fewer records.
    /// On the CPU run of the GPU benchmark (rounds 1.17x alone, native a clear loss and off for
    /// 60 s) the auto row served 1 request in 9 by rounds and the rest untouched: 0.96x. The
    /// path that is off is tried again through its own probe, when its back-off ends.
    pub(super) fn choose_path(
        &self,
        info: &PairingInfo,
        now: Instant,
    ) -> Option<path_choice::SpeculationPath> {
        let n = self.native_alternative.as_ref()?;
        let rounds_open = info
            .usable_drafters(&[])
            .into_iter()
            .any(|i| self.drafts[i].with_controller(|c| c.would_speculate(now)));
        let native_open = lock_controller(&n.controller).would_speculate(now);
        Some(match (rounds_open, native_open) {
            (true, false) => path_choice::SpeculationPath::Rounds,
            (false, true) => path_choice::SpeculationPath::Native,
            _ => n
                .chooser
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .choose(),
        })
    }

    pub(super) fn record_path(
        &self,
        path: path_choice::SpeculationPath,
        tokens: usize,
        seconds: f64,
    ) {
        if let Some(n) = &self.native_alternative {
            n.chooser
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .record(path, tokens, seconds);
        }
    }

    /// The controller's state for the stats JSON.
    pub fn controller_view(&self) -> controller::ControllerView {
        self.with_controller(|c| c.view())
    }

    pub(super) fn publish_controller_state(&self) {
        let (enabled, reason) = self.with_controller(|c| {
            (
                !matches!(c.mode(), controller::Mode::Off { .. }),
                c.last_decision.as_ref().map(|d| d.reason.clone()),
            )
        });
        self.metrics
            .set_speculation(enabled, if enabled { None } else { reason });
    }

    /// Count a failed request; after a backend failure, forget what was probed so the next
    /// request looks at the servers again.
    pub async fn record_failure(&self, e: &EngineError) {
        self.metrics.request(ServedBy::Error);
        if matches!(e, EngineError::Backend(_)) {
            self.invalidate().await;
        }
    }

    /// Forget what was probed (after a backend failure), so the next request looks again.
    pub async fn invalidate(&self) {
        *self.probed.lock().await = None;
    }
}
