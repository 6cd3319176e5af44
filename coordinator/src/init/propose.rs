//! `tightwad init --from-agents`' proposals: draft/target pairs from the models the agents
//! report (same vocabulary fingerprint; the largest the target, a small one the draft), and the
//! placement planner's flags for each target on its host.

use tightwad_protocol::messages::ModelFile;

/// A proposed pairing: the target and the draft model, and the hosts they are on.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub target_host: String,
    pub target: ModelFile,
    pub draft_host: String,
    pub draft: ModelFile,
    /// The placement planner's llama-server flags for the target on its host's GPUs and RAM
    /// (`-c`, `-ngl`, `--tensor-split`, expert offload), when the host's inventory was read.
    pub target_placement: Option<Vec<String>>,
}

/// The planner's flags for `model` on a host with these GPUs and RAM (`tightwad inspect --plan`
/// does the same arithmetic), at `context` tokens.
pub fn placement_for(
    host: &str,
    status: &tightwad_protocol::messages::AgentStatus,
    model: &ModelFile,
    context: u64,
) -> Option<Vec<String>> {
    let g = model.gguf.as_ref()?;
    let bytes = tightwad_placement::plan::ModelBytes::from_summary(g, model.size_bytes);
    let target = tightwad_placement::plan::Target {
        host: host.to_string(),
        ram_bytes: status.inventory.host.ram_total_bytes,
        devices: crate::cluster::devices::gpu_devices(host, status),
    };
    let options = tightwad_placement::plan::PlanOptions {
        context: Some(context),
        ..Default::default()
    };
    Some(tightwad_placement::plan::plan(&bytes, &target, &options).flags)
}

/// Proposes pairs from the hosts' model files: files with the same vocabulary fingerprint form a
/// family; its largest model is the target, its smallest one under a quarter of the target's
/// parameters (else the smallest at all) the draft, preferably on another host than the target.
pub fn propose(models: &[(String, ModelFile)]) -> Vec<Proposal> {
    let mut families: std::collections::BTreeMap<String, Vec<&(String, ModelFile)>> =
        Default::default();
    for entry in models {
        if let Some(fp) = entry
            .1
            .gguf
            .as_ref()
            .and_then(|g| g.vocab_fingerprint.clone())
        {
            families.entry(fp).or_default().push(entry);
        }
    }
    let params = |m: &ModelFile| m.gguf.as_ref().map(|g| g.parameter_count).unwrap_or(0);
    let mut proposals = Vec::new();
    for members in families.values() {
        let Some(target) = members
            .iter()
            .max_by_key(|(h, m)| (params(m), m.size_bytes, std::cmp::Reverse(h.clone())))
        else {
            continue;
        };
        let smaller: Vec<_> = members
            .iter()
            .filter(|(_, m)| params(m) < params(&target.1))
            .collect();
        let small_enough: Vec<_> = smaller
            .iter()
            .filter(|(_, m)| params(m) * 4 <= params(&target.1))
            .collect();
        let pool: Vec<_> = if small_enough.is_empty() {
            smaller
        } else {
            small_enough.into_iter().copied().collect()
        };
        let smallest = pool.iter().map(|(_, m)| params(m)).min();
        let Some(smallest) = smallest else { continue };
        let candidates: Vec<_> = pool.iter().filter(|(_, m)| params(m) == smallest).collect();
        let draft = candidates
            .iter()
            .find(|(h, _)| *h != target.0)
            .or_else(|| candidates.first())
            .copied();
        if let Some(draft) = draft {
            proposals.push(Proposal {
                target_host: target.0.clone(),
                target: target.1.clone(),
                draft_host: draft.0.clone(),
                draft: draft.1.clone(),
                target_placement: None,
            });
        }
    }
    proposals
}
