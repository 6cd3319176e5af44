//! Before any server runs: is the draft cheap enough next to its target for speculation to pay
//! at all? Decoding one token reads every active weight once, so on equal hardware the draft's
//! cost ratio `c = T_draft / T_target` is about the ratio of bytes read per token (for MoE models
//! only the experts in use count). Above c ≈ 0.5 nothing helps (speculation.md §C.4); the field
//! report's pair — GPT-OSS 20B drafting for 120B, both MoE with ~3.6B vs ~5.1B active — sits at
//! ~0.7, which predicted its 0.39x before a single token.

use serde_json::json;
use tightwad_protocol::messages::GgufSummary;

use super::agents::Cluster;
use super::report::{gib, Category, Check, Status};
use crate::cluster::layout::{Layout, Role};

/// Above this draft/target cost ratio speculation does not pay whatever the acceptance.
pub const MAX_COST_RATIO: f64 = 0.5;

/// Bytes of weights read to decode one token: dense tensors, plus the share of the experts a
/// token is routed through.
pub fn active_bytes(g: &GgufSummary) -> u64 {
    let dense = g.tensor_bytes.saturating_sub(g.expert_tensor_bytes);
    let experts = match (g.expert_count, g.expert_used_count) {
        (Some(n), Some(used)) if n > 0 && g.expert_tensor_bytes > 0 => {
            (g.expert_tensor_bytes as f64 * used.min(n) as f64 / n as f64) as u64
        }
        _ => g.expert_tensor_bytes,
    };
    dense + experts
}

fn check(subject: String, target: &GgufSummary, draft: &GgufSummary) -> Option<Check> {
    let (t, d) = (active_bytes(target), active_bytes(draft));
    // A pair that cannot speculate at all (the vocabulary check says why) has no payoff to judge.
    if t == 0 || !super::vocab::differences(target, draft).is_empty() {
        return None;
    }
    let c = d as f64 / t as f64;
    let message = format!(
        "draft/target cost ratio ≈ {c:.2} from model sizes (per token the draft reads {}, the target {}; equal hardware assumed)",
        gib(d),
        gib(t)
    );
    let details = json!({ "cost_ratio": c, "draft_active_bytes": d, "target_active_bytes": t });
    Some(if c >= MAX_COST_RATIO {
        Check::new(Category::Payoff, subject, Status::Warn, message)
            .hint(format!(
                "above {MAX_COST_RATIO} speculation cannot pay even at 100% acceptance (the field report's 20B→120B MoE pair was ~0.7 and ran at 0.39x): use a much smaller draft of the same family, or a draft host much faster than the target's"
            ))
            .details(details)
    } else {
        Check::new(Category::Payoff, subject, Status::Pass, message).details(details)
    })
}

pub fn checks(cluster: &Cluster, layout: &Layout) -> Vec<Check> {
    let mut checks = Vec::new();
    for (index, pairing) in layout.pairings.iter().enumerate() {
        let name = pairing.display_name(index);
        let (Some(t), Some(d)) = (
            layout.process_for(&name, Role::Target),
            layout.process_for(&name, Role::Draft),
        ) else {
            continue;
        };
        let target = cluster.main_model(&t).and_then(|m| m.gguf.as_ref());
        let draft = cluster.main_model(&d).and_then(|m| m.gguf.as_ref());
        if let (Some(target), Some(draft)) = (target, draft) {
            checks.extend(check(format!("pairing {name}"), target, draft));
        }
    }
    for native in &layout.native_pairings {
        let target = cluster
            .main_model(&native.target)
            .and_then(|m| m.gguf.as_ref());
        let draft = cluster
            .draft_model(&native.target)
            .and_then(|m| m.gguf.as_ref());
        if let (Some(target), Some(draft)) = (target, draft) {
            checks.extend(check(format!("native {}", native.name), target, draft));
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moe(total: u64, experts: u64, count: u64, used: u64) -> GgufSummary {
        GgufSummary {
            tensor_bytes: total,
            expert_tensor_bytes: experts,
            expert_count: Some(count),
            expert_used_count: Some(used),
            ..Default::default()
        }
    }

    #[test]
    fn the_field_reports_pair_is_flagged_and_a_small_draft_passes() {
        // GPT-OSS 120B: ~60 GB, 128 experts, 4 used; GPT-OSS 20B: ~12 GB, 32 experts, 4 used.
        let target = moe(60_000_000_000, 57_000_000_000, 128, 4);
        let draft = moe(12_100_000_000, 10_500_000_000, 32, 4);
        let flagged = check("pairing gpt-oss".into(), &target, &draft).expect("check");
        assert_eq!(flagged.status, Status::Warn, "{flagged:?}");
        let c = flagged.details["cost_ratio"].as_f64().expect("ratio");
        assert!(c > 0.5 && c < 1.0, "{c}");
        // A dense 70B Q4 target (~40 GB) with a 1B draft (~0.8 GB).
        let dense = |bytes| GgufSummary {
            tensor_bytes: bytes,
            ..Default::default()
        };
        let fine = check(
            "pairing llama".into(),
            &dense(40_000_000_000),
            &dense(800_000_000),
        )
        .expect("check");
        assert_eq!(fine.status, Status::Pass, "{fine:?}");
    }
}
