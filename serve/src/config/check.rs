//! Whether a configuration can run ([`ProxyConfig::validate`]) and what in it cannot do what
//! it says ([`ProxyConfig::advice`]): settings that cannot act and an open listener are warned
//! about at startup rather than silently accepted.

use std::collections::HashMap;

use super::{ConfigError, PairingEntry, ProxyConfig};
use crate::backend::BackendKind;
use crate::engine::controller::{K_MAX, MOE_K_MAX};

/// A value that cannot run, at its key path: the loader says where it was set (the file and
/// line, the variable, the flag).
fn at(key: String, message: String) -> ConfigError {
    ConfigError::Key { key, message }
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            (
                "max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
            ("header_read_timeout_s", self.header_read_timeout_s),
            ("body_read_timeout_s", self.body_read_timeout_s),
        ] {
            if value == 0 {
                return Err(at(key.to_string(), format!("{key} must be at least 1")));
            }
        }
        if self.pairings.is_empty() {
            return Err(ConfigError::Invalid(
                "no target configured: pass --target URL or add a [[pairings]] table".into(),
            ));
        }
        for (i, p) in self.pairings.iter().enumerate() {
            let draft_url = p
                .draft
                .as_ref()
                .filter(|d| d.as_str() != crate::engine::PROMPT_LOOKUP);
            let listed = p.drafts.iter().map(|u| ("drafts", Some(u)));
            for (what, url) in [("target", Some(&p.target)), ("draft", draft_url)]
                .into_iter()
                .chain(listed)
            {
                if let Some(url) = url {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(at(
                            format!("pairings.{i}.{what}"),
                            format!(
                            "pairing {i}: {what} URL {url:?} must start with http:// or https://"
                        ),
                        ));
                    }
                }
            }
            if p.drafts.iter().any(|d| d == crate::engine::PROMPT_LOOKUP) {
                return Err(at(format!("pairings.{i}.drafts"), format!(
                    "pairing {i}: drafts lists draft servers; use draft = \"prompt-lookup\" (or prompt_lookup_fallback = true) for prompt lookup"
                )));
            }
            if p.native && !p.drafts.is_empty() {
                return Err(at(
                    format!("pairings.{i}.native"),
                    format!(
                        "pairing {i}: a native pairing drafts inside the target; remove drafts"
                    ),
                ));
            }
            if p.native && p.target_kind != BackendKind::Llamacpp {
                return Err(at(format!("pairings.{i}.native"), format!(
                    "pairing {i}: native = true needs a llama.cpp target (llama.cpp's own speculation); with target_kind = \"{}\" give a draft URL instead",
                    p.target_kind.as_str()
                )));
            }
            let k_max = K_MAX;
            if let Some(k) = p.draft_tokens.filter(|k| *k == 0 || *k > k_max) {
                return Err(at(format!("pairings.{i}.draft_tokens"), format!(
                    "pairing {i}: draft_tokens must be between 1 and {k_max} (the most the controller drafts per round), got {k}"
                )));
            }
            if !(0.0..=1.0).contains(&p.draft_p_min) {
                return Err(at(format!("pairings.{i}.draft_p_min"), format!(
                    "pairing {i}: draft_p_min is a probability, between 0 (drafts run to draft_tokens) and 1, got {}",
                    p.draft_p_min
                )));
            }
            if p.draft_backend_sampling && p.draft_p_min > 0.0 {
                return Err(at(format!("pairings.{i}.draft_backend_sampling"), format!(
                    "pairing {i}: draft_backend_sampling cannot be combined with draft_p_min = {} (the draft server's confidence stop reads the logits on the host, which sampling on the device does not copy there): set draft_p_min = 0 or draft_backend_sampling = false",
                    p.draft_p_min
                )));
            }
        }
        self.check_model_names()
    }

    /// Every model name (pairing names and aliases) answers for one pairing only.
    fn check_model_names(&self) -> Result<(), ConfigError> {
        let mut owner: HashMap<String, usize> = HashMap::new();
        for (i, p) in self.pairings.iter().enumerate() {
            let name = p.to_pairing_config(i).name;
            for model in std::iter::once(&name).chain(&p.aliases) {
                if model.trim().is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "pairing {i}: a model name or alias is empty"
                    )));
                }
                if let Some(first) = owner.insert(model.clone(), i) {
                    if first != i || model != &name {
                        return Err(ConfigError::Invalid(format!(
                            "model name {model:?} is used by pairing {first} and pairing {i}: each name and alias must pick one pairing"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Sentences for the log: settings that cannot act as written, and a listener open to the
    /// network with no API key. Empty when nothing needs saying.
    pub fn advice(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.listen.ip().is_loopback() && self.api_keys.is_empty() {
            out.push(format!(
                "NO API KEYS while listening on {} (not loopback): anyone who can reach this address can use every model. Set api_keys = [\"...\"] in the config (or TIGHTWAD_API_KEY), or listen on 127.0.0.1",
                self.listen
            ));
        }
        for (i, p) in self.pairings.iter().enumerate() {
            let name = p.to_pairing_config(i).name;
            if !p.adaptive {
                if let Some(limit) = p.disable_above_tok_s {
                    out.push(format!(
                        "pairing {name:?}: disable_above_tok_s = {limit} has no effect with adaptive = false (speculation is pinned on every round); remove one of them"
                    ));
                }
            }
            // Only a llama-server draft can end a draft at a confidence floor or sample on its
            // device.
            if let Some(why) = p.draft_request_unheard() {
                let asked = [
                    (p.draft_p_min > 0.0).then(|| format!("draft_p_min = {}", p.draft_p_min)),
                    p.draft_backend_sampling
                        .then(|| "draft_backend_sampling = true".to_string()),
                ];
                for setting in asked.into_iter().flatten() {
                    out.push(format!(
                        "pairing {name:?}: {setting} has no effect: {why}; remove it"
                    ));
                }
            }
            if p.moe {
                if !p.adaptive {
                    out.push(format!(
                        "pairing {name:?}: moe = true has no effect with adaptive = false (every round drafts the same number of tokens); remove one of them"
                    ));
                } else if let Some(k) = p.draft_tokens.filter(|k| *k <= MOE_K_MAX) {
                    out.push(format!(
                        "pairing {name:?}: moe = true has no effect at draft_tokens = {k} (it holds k at {MOE_K_MAX} or less until verifying {K_MAX} tokens is measured cheap); set draft_tokens = {K_MAX} (or leave it unset) to let the controller go higher once it is, or remove moe"
                    ));
                }
            }
        }
        out
    }
}

impl PairingEntry {
    /// Why no draft server of this pairing can act on how a draft is asked for (a confidence
    /// floor, device sampling): only llama-server drafts can. `None` when one can.
    fn draft_request_unheard(&self) -> Option<&'static str> {
        let servers = self
            .draft
            .iter()
            .chain(&self.drafts)
            .any(|d| d.as_str() != crate::engine::PROMPT_LOOKUP);
        if !servers {
            Some("no draft server drafts for it (prompt lookup or native pairing only)")
        } else if self.draft_kind == BackendKind::Vllm {
            Some("its drafts come from vLLM, which takes only n greedy tokens")
        } else {
            None
        }
    }
}
