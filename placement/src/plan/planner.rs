//! The planner: choosing a [`Config`] that fits a model on a target (layers in proportion to usable
//! memory, overflows repaired, experts where they fit), and checking one as given, with a
//! warning in numbers for every device over its memory.

use std::collections::BTreeSet;

use super::rules::{compute_bytes, context_of, evaluate, flags_for, kv_layer_bytes};
use super::{
    gib, saturating_sum, Config, DeviceKind, DeviceUse, ModelBytes, Plan, PlanOptions, Target,
};

/// Plans `model` on `target`: every layer's non-expert weights and KV on the devices, routed
/// experts where they fit, the rest in CPU RAM.
pub fn plan(model: &ModelBytes, target: &Target, options: &PlanOptions) -> Plan {
    let context = context_of(model, options);
    let kv = kv_layer_bytes(model, options, context);
    let n = target.devices.len();
    let n_layer = model.n_layer;
    let mut warnings = Vec::new();
    if n == 0 {
        let config = Config {
            gpu_layers: 0,
            tensor_split: vec![],
            cpu_expert_layers: BTreeSet::new(),
        };
        return finish(model, target, options, config, context, warnings);
    }
    // Usable memory per device: capacity less headroom and its compute buffer.
    let usable: Vec<u64> = target
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            d.memory_bytes
                .saturating_sub(options.headroom_bytes)
                .saturating_sub(compute_bytes(model, options, i == n - 1))
        })
        .collect();
    let total_usable = saturating_sum(usable.iter().copied());
    let slot_need = |il: u32| -> u64 {
        if il == n_layer {
            model.output
        } else {
            model.layer[il as usize].saturating_add(kv)
        }
    };
    // 1. How many slots (counted from the output backwards) can be offloaded at all.
    let mut gpu_layers = 0u32;
    let mut need = 0u64;
    for il in (0..=n_layer).rev() {
        if need.saturating_add(slot_need(il)) > total_usable {
            break;
        }
        need = need.saturating_add(slot_need(il));
        gpu_layers += 1;
    }
    if gpu_layers == 0 {
        warnings.push(format!(
            "not even the output layer ({}) fits the devices' {} usable memory: everything stays on the CPU",
            gib(model.output),
            gib(total_usable)
        ));
    } else if gpu_layers < n_layer + 1 {
        warnings.push(format!(
            "the non-expert weights and KV cache of {} of {} layers do not fit the devices ({} usable): those layers run on the CPU",
            n_layer + 1 - gpu_layers,
            n_layer + 1,
            gib(total_usable)
        ));
    }
    let first = n_layer + 1 - gpu_layers;
    // 2. Split the offloaded slots over the devices, contiguous and in order, in proportion to
    //    usable memory (so each has room for its share of experts), then repair overflows.
    let mut counts = proportional(gpu_layers, &usable);
    repair(&mut counts, &usable, first, &slot_need);
    // 3. Experts: per device, keep the experts of its last layers while they fit; the first
    //    ones of its range go to the CPU (so a single device gives `--n-cpu-moe N`).
    let mut cpu_expert_layers = BTreeSet::new();
    let mut at = first;
    for (d, count) in counts.iter().enumerate() {
        let range: Vec<u32> = (at..at + count).filter(|il| *il < n_layer).collect();
        at += count;
        let base = saturating_sum((at - count..at).map(&slot_need));
        let mut room = usable[d].saturating_sub(base);
        let rpc = target.devices[d].kind == DeviceKind::Rpc;
        for il in range.iter().rev() {
            let e = model.experts[*il as usize];
            if e == 0 {
                continue;
            }
            if (!rpc || options.experts_on_rpc) && e <= room {
                room -= e;
            } else {
                cpu_expert_layers.insert(*il);
            }
        }
    }
    let config = Config {
        gpu_layers,
        tensor_split: counts.iter().map(|c| *c as f64).collect(),
        cpu_expert_layers,
    };
    finish(model, target, options, config, context, warnings)
}

fn finish(
    model: &ModelBytes,
    target: &Target,
    options: &PlanOptions,
    config: Config,
    context: u64,
    mut warnings: Vec<String>,
) -> Plan {
    let devices = evaluate(model, target, options, &config);
    let mut fits = true;
    for d in &devices {
        let headroom = if d.kind.is_some() {
            options.headroom_bytes
        } else {
            0
        };
        if !d.fits(headroom) {
            fits = false;
            warnings.push(over_message(d, headroom));
        }
    }
    let flags = flags_for(model, &config, target.devices.len(), context);
    Plan {
        config,
        context,
        devices,
        flags,
        warnings,
        fits,
    }
}

fn over_message(d: &DeviceUse, headroom: u64) -> String {
    let what = match d.kind {
        Some(DeviceKind::Rpc) => "RPC worker",
        Some(DeviceKind::Gpu) => "GPU",
        None => "system RAM of",
    };
    let spill = match d.kind {
        Some(DeviceKind::Rpc) => ": an rpc-server cannot spill into system RAM, the load fails",
        Some(DeviceKind::Gpu) => ": the load fails (out of device memory)",
        None => ": the model would swap",
    };
    format!(
        "{what} {} on {} would need {} (weights {}, experts {}, KV {}, compute {}{}) but has {}{spill}",
        d.name,
        d.host,
        gib(d.total_bytes()),
        gib(d.weights_bytes),
        gib(d.expert_bytes),
        gib(d.kv_bytes),
        gib(d.compute_bytes),
        if headroom > 0 {
            format!(", + {} headroom", gib(headroom))
        } else {
            String::new()
        },
        gib(d.capacity_bytes)
    )
}

/// Checks a configuration as given (a `--tensor-split` from a config, or llama.cpp's default split
/// by device memory): the devices over their memory, with the numbers.
pub fn check(model: &ModelBytes, target: &Target, options: &PlanOptions, config: &Config) -> Plan {
    let context = context_of(model, options);
    finish(model, target, options, config.clone(), context, Vec::new())
}

/// Largest-remainder split of `total` slots in proportion to `weights`.
fn proportional(total: u32, weights: &[u64]) -> Vec<u32> {
    let sum: u128 = weights.iter().map(|w| *w as u128).sum();
    if sum == 0 {
        let mut v = vec![0; weights.len()];
        if let Some(last) = v.last_mut() {
            *last = total;
        }
        return v;
    }
    let mut counts: Vec<u32> = weights
        .iter()
        .map(|w| (total as u128 * *w as u128 / sum) as u32)
        .collect();
    let mut rest: Vec<(u128, usize)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| ((total as u128 * *w as u128) % sum, i))
        .collect();
    rest.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let assigned: u32 = counts.iter().sum();
    for (_, i) in rest.iter().take((total - assigned) as usize) {
        counts[*i] += 1;
    }
    counts
}

/// Moves slots from devices whose non-expert share overflows to neighbours with room.
fn repair(counts: &mut [u32], usable: &[u64], first: u32, slot_need: &dyn Fn(u32) -> u64) {
    let n = counts.len();
    for _ in 0..(counts.iter().sum::<u32>() as usize * n + 1) {
        let starts: Vec<u32> = counts
            .iter()
            .scan(first, |at, c| {
                let s = *at;
                *at += c;
                Some(s)
            })
            .collect();
        let need =
            |d: usize| -> u64 { saturating_sum((starts[d]..starts[d] + counts[d]).map(slot_need)) };
        let Some(over) = (0..n).find(|d| need(*d) > usable[*d]) else {
            return;
        };
        // Prefer the neighbour with more free room.
        let room = |d: usize| usable[d].saturating_sub(need(d));
        let left = over.checked_sub(1);
        let right = (over + 1 < n).then_some(over + 1);
        let to = match (left, right) {
            (Some(l), Some(r)) => {
                if room(l) >= room(r) {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => return,
        };
        if counts[over] == 0 {
            return;
        }
        counts[over] -= 1;
        counts[to] += 1;
    }
}
