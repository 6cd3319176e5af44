//! `tightwad inspect MODEL.gguf [--plan]`: what a GGUF file holds (architecture, parameters,
//! experts, quantization per tensor type, context, vocabulary) and, with `--plan`, where its
//! tensors should go on the cluster's devices — the placement planner of `tightwad-placement`,
//! the same arithmetic doctor's memory check uses.
//!
//! Devices come from flags (`--gpu MIB`, `--rpc-worker NAME=MIB`), or from the agents'
//! inventories (`--host H` runs llama-server, `--rpc-worker H` names an agent whose first GPU an
//! rpc-server exposes), or else the local machine's RAM (CPU only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tightwad_placement::ggml;
use tightwad_placement::gguf::{read_model, GgufModel};
use tightwad_placement::plan::{
    config_from_args, plan, role_of, Device, DeviceKind, ModelBytes, Plan, PlanOptions, Target,
    TensorRole,
};

use crate::cluster::devices::{gpu_devices, rpc_device};
use crate::cluster::launch::shell_join;
use crate::cluster::layout::host_ip;
use crate::cluster::{Fleet, FleetConfig};
use crate::doctor::report::gib;

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  tightwad inspect gpt-oss-120b.gguf\n  tightwad inspect gpt-oss-120b.gguf --plan --gpu 24576 --gpu 24576 --rpc-worker desktop=12288 --ram 64\n  tightwad -c tightwad.toml inspect model.gguf --plan --host gpu-box --rpc-worker desktop --json"
)]
pub struct InspectArgs {
    /// The GGUF file (the first shard of a split model).
    pub model: PathBuf,
    /// Plan the placement: tensor split, expert offload, per-device memory and the flags.
    #[arg(long)]
    pub plan: bool,
    /// A local GPU of the llama-server host, in MiB (repeatable; in llama.cpp's device order).
    #[arg(long = "gpu", value_name = "MIB")]
    pub gpus: Vec<u64>,
    /// An RPC worker: `NAME=MIB` (its device memory), or an agent's host name from the config
    /// (its first GPU, or its RAM when it has none). Repeatable.
    #[arg(long = "rpc-worker", value_name = "NAME[=MIB]")]
    pub rpc_workers: Vec<String>,
    /// The agent host that runs llama-server: its GPUs and RAM from its inventory.
    #[arg(long)]
    pub host: Option<String>,
    /// RAM of the llama-server host in GiB (default: the agent's, else this machine's).
    #[arg(long, value_name = "GIB")]
    pub ram: Option<f64>,
    /// Context tokens (`-c`; default: the model's training context).
    #[arg(long, short = 'C')]
    pub ctx: Option<u64>,
    /// Memory kept free per device (MiB).
    #[arg(long, default_value_t = 256)]
    pub headroom_mib: u64,
    /// Keep routed experts off RPC workers (in the llama-server host's RAM instead).
    #[arg(long)]
    pub no_experts_on_rpc: bool,
    /// Check these llama-server arguments (`--tensor-split`, `-ngl`, `-ot`, `--n-cpu-moe`)
    /// instead of planning, after `--`.
    #[arg(last = true)]
    pub check_args: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of the quantization table: tensors of one ggml type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TypeRow {
    pub ggml_type: String,
    pub tensors: u64,
    pub bytes: u64,
    pub expert_bytes: u64,
}

/// The metadata report.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: String,
    pub file_bytes: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub parameters: u64,
    pub file_type: Option<String>,
    pub layers: u32,
    pub embedding_length: Option<u64>,
    pub heads: Option<u64>,
    pub kv_heads: Option<u64>,
    pub context_length: Option<u64>,
    pub vocab_size: Option<u64>,
    pub tokenizer: Option<String>,
    pub expert_count: Option<u64>,
    pub expert_used_count: Option<u64>,
    pub weight_bytes: u64,
    pub expert_bytes: u64,
    pub shared_expert_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub types: Vec<TypeRow>,
    /// Bytes the tensor table claims beyond the end of the file (a truncated download).
    pub missing_bytes: u64,
    pub split_count: Option<u64>,
}

pub fn inspection(path: &Path, model: &GgufModel) -> Inspection {
    let bytes = ModelBytes::from_gguf(model);
    let mut types: BTreeMap<u32, TypeRow> = BTreeMap::new();
    let mut shared = 0u64;
    for t in &model.tensors {
        let row = types.entry(t.ggml_type).or_insert_with(|| TypeRow {
            ggml_type: ggml::type_name(t.ggml_type),
            tensors: 0,
            bytes: 0,
            expert_bytes: 0,
        });
        // A header's sizes are claims: absurd ones saturate instead of wrapping.
        row.tensors += 1;
        row.bytes = row.bytes.saturating_add(t.bytes);
        if role_of(&t.name) == TensorRole::Expert {
            row.expert_bytes = row.expert_bytes.saturating_add(t.bytes);
        }
        if t.name.contains("_shexp") {
            shared = shared.saturating_add(t.bytes);
        }
    }
    let mut types: Vec<TypeRow> = types.into_values().collect();
    types.sort_by_key(|t| std::cmp::Reverse(t.bytes));
    let s = &model.summary;
    Inspection {
        path: path.display().to_string(),
        file_bytes: model.file_len,
        architecture: s.architecture.clone(),
        name: s.name.clone(),
        parameters: s.parameter_count,
        file_type: s.file_type.clone(),
        layers: bytes.n_layer,
        embedding_length: s.embedding_length,
        heads: s.head_count,
        kv_heads: s.head_count_kv,
        context_length: s.context_length,
        vocab_size: s.vocab_size,
        tokenizer: s.tokenizer_model.clone(),
        expert_count: s.expert_count,
        expert_used_count: s.expert_used_count,
        weight_bytes: model.tensor_table_bytes(),
        expert_bytes: bytes.expert_weights(),
        shared_expert_bytes: shared,
        kv_bytes_per_token: bytes
            .kv_per_token_layer
            .saturating_mul(bytes.n_layer as u64),
        types,
        missing_bytes: model.missing_bytes(),
        split_count: s.split_count,
    }
}

impl Inspection {
    pub fn render(&self) -> String {
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        let mut out = String::new();
        out += &format!("{}\n", self.path);
        out += &format!(
            "  architecture  {}   name {}\n",
            self.architecture.as_deref().unwrap_or("?"),
            self.name.as_deref().unwrap_or("?")
        );
        out += &format!(
            "  parameters    {} ({})   file {}   type {}\n",
            crate::doctor::memory::params(self.parameters),
            self.parameters,
            gib(self.file_bytes),
            self.file_type.as_deref().unwrap_or("?")
        );
        out += &format!(
            "  layers        {}   embedding {}   heads {} (kv {})\n",
            self.layers,
            opt(self.embedding_length),
            opt(self.heads),
            opt(self.kv_heads)
        );
        out += &format!(
            "  context       {}   vocabulary {} ({})\n",
            opt(self.context_length),
            opt(self.vocab_size),
            self.tokenizer.as_deref().unwrap_or("?")
        );
        match self.expert_count {
            Some(e) if e > 1 || self.expert_bytes > 0 => {
                out += &format!(
                    "  experts       MoE: {e} experts, {} used per token; routed experts {} of {} weights ({:.0}%), shared experts {}\n",
                    opt(self.expert_used_count),
                    gib(self.expert_bytes),
                    gib(self.weight_bytes),
                    100.0 * self.expert_bytes as f64 / self.weight_bytes.max(1) as f64,
                    gib(self.shared_expert_bytes)
                );
            }
            _ => out += "  experts       none (dense)\n",
        }
        out += &format!(
            "  KV cache      {} per token at F16\n",
            human(self.kv_bytes_per_token)
        );
        out += "  tensors by type:\n";
        for t in &self.types {
            out += &format!(
                "    {:<9} {:>5} tensors  {:>10}{}\n",
                t.ggml_type,
                t.tensors,
                gib(t.bytes),
                if t.expert_bytes > 0 {
                    format!("  (experts {})", gib(t.expert_bytes))
                } else {
                    String::new()
                }
            );
        }
        if let Some(n) = self.split_count.filter(|n| *n > 1) {
            out += &format!("  split         {n} shards (this header describes its own shard)\n");
        }
        if self.missing_bytes > 0 {
            out += &format!(
                "  ✗ the file is {} shorter than its tensor table: a truncated download? Copy it again.\n",
                gib(self.missing_bytes)
            );
        }
        out
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        gib(bytes)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

async fn target_for(args: &InspectArgs, config: &Path) -> anyhow::Result<Target> {
    let mut rpc = Vec::new();
    let mut gpus = Vec::new();
    let mut host = "local".to_string();
    let mut ram = None;
    let needs_fleet = args.host.is_some() || args.rpc_workers.iter().any(|w| !w.contains('='));
    let fleet = if needs_fleet {
        Some(Fleet::open(FleetConfig::load_existing(config)?)?)
    } else {
        None
    };
    let status_of = |name: String| {
        let fleet = fleet.as_ref();
        async move {
            let fleet = fleet.context("no fleet")?;
            let entry = fleet
                .config
                .hosts
                .iter()
                .find(|h| h.name == name)
                .with_context(|| {
                    format!(
                        "no host {name:?} in the config's [[hosts]] (or give its memory: NAME=MIB)"
                    )
                })?
                .clone();
            let client = fleet.connect(&entry).await?;
            let status = client
                .status()
                .await
                .with_context(|| format!("status of {name}"))?;
            anyhow::Ok((entry, status))
        }
    };
    if let Some(name) = &args.host {
        let (_, status) = status_of(name.clone()).await?;
        gpus = gpu_devices(name, &status);
        ram = Some(status.inventory.host.ram_total_bytes);
        host = name.clone();
    }
    for worker in &args.rpc_workers {
        match worker.split_once('=') {
            Some((name, mib)) => {
                let mib: u64 = mib.trim().parse().with_context(|| {
                    format!("--rpc-worker {worker}: the memory after = is MiB, a whole number")
                })?;
                rpc.push(Device {
                    name: format!("RPC0[{name}:50052]"),
                    kind: DeviceKind::Rpc,
                    host: name.to_string(),
                    memory_bytes: mib << 20,
                });
            }
            None => {
                let (entry, status) = status_of(worker.clone()).await?;
                let endpoint = format!("{}:50052", host_ip(&entry.address));
                rpc.push(rpc_device(worker, &endpoint, &status));
            }
        }
    }
    for (i, mib) in args.gpus.iter().enumerate() {
        gpus.push(Device {
            name: format!("GPU{i}"),
            kind: DeviceKind::Gpu,
            host: host.clone(),
            memory_bytes: mib << 20,
        });
    }
    let ram = match (args.ram, ram) {
        (Some(gib), _) => (gib * (1u64 << 30) as f64) as u64,
        (None, Some(r)) => r,
        (None, None) => {
            let mut sys = sysinfo::System::new();
            sys.refresh_memory();
            sys.total_memory()
        }
    };
    // llama.cpp lists RPC devices before local ones.
    rpc.extend(gpus);
    Ok(Target {
        host,
        ram_bytes: ram,
        devices: rpc,
    })
}

pub fn render_plan(p: &Plan) -> String {
    let mut out = String::new();
    out += &format!(
        "placement ({} context tokens){}\n",
        p.context,
        if p.fits { "" } else { "  ✗ DOES NOT FIT" }
    );
    out += &format!(
        "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  layers\n",
        "device", "capacity", "weights", "experts", "KV", "compute", "total"
    );
    for d in &p.devices {
        let layers = match d.layers {
            Some((a, b)) if a == b => format!("{a}"),
            Some((a, b)) => format!("{a}-{b}"),
            None => "-".into(),
        };
        out += &format!(
            "  {:<28} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}  {layers}{}\n",
            format!("{} ({})", d.name, d.host),
            gib(d.capacity_bytes),
            gib(d.weights_bytes),
            gib(d.expert_bytes),
            gib(d.kv_bytes),
            gib(d.compute_bytes),
            gib(d.total_bytes()),
            if d.holds_output { " + output" } else { "" }
        );
    }
    out += &format!("  llama-server flags: {}\n", shell_join(&p.flags));
    for w in &p.warnings {
        out += &format!("  ! {w}\n");
    }
    out
}

pub async fn run(args: InspectArgs, config: &Path) -> anyhow::Result<ExitCode> {
    let model = read_model(&args.model)
        .with_context(|| format!("reading the GGUF header of {}", args.model.display()))?;
    let report = inspection(&args.model, &model);
    let mut exit = if report.missing_bytes > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    let planned = if args.plan || !args.check_args.is_empty() {
        let target = target_for(&args, config).await?;
        let bytes = ModelBytes::from_gguf(&model);
        let options = PlanOptions {
            context: args.ctx,
            headroom_bytes: args.headroom_mib << 20,
            experts_on_rpc: !args.no_experts_on_rpc,
            ..PlanOptions::default()
        };
        let p = if args.check_args.is_empty() {
            plan(&bytes, &target, &options)
        } else {
            let given = config_from_args(&bytes, &args.check_args, target.devices.len());
            tightwad_placement::plan::check(&bytes, &target, &options, &given)
        };
        if !p.fits {
            exit = ExitCode::FAILURE;
        }
        Some((target, p))
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some((target, p)) = &planned {
            v["target"] = serde_json::to_value(target)?;
            v["plan"] = serde_json::to_value(p)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", report.render());
        if let Some((target, p)) = &planned {
            if target.devices.is_empty() {
                println!("no GPU or RPC worker given (--gpu, --rpc-worker, --host): planning for the CPU alone");
            }
            print!("{}", render_plan(p));
        }
    }
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tightwad_placement::gguf::read_model_header;
    use tightwad_placement::synth::{Meta, SynthGguf};

    #[test]
    fn inspection_counts_types_experts_and_truncation() {
        let g = SynthGguf::new("qwen2moe")
            .arch_u32("block_count", 1)
            .arch_u32("embedding_length", 256)
            .arch_u32("attention.head_count", 4)
            .arch_u32("expert_count", 8)
            .arch_u32("expert_used_count", 2)
            .meta("general.name", Meta::Str("t".into()))
            .tensor("token_embd.weight", &[256, 100], 1)
            .tensor("blk.0.attn_q.weight", &[256, 256], 8)
            .tensor("blk.0.ffn_up_exps.weight", &[256, 128, 8], 12)
            .tensor("blk.0.ffn_up_shexp.weight", &[256, 256], 8);
        let header = g.header();
        let model = read_model_header(&header[..], g.file_len()).expect("parse");
        let r = inspection(Path::new("m.gguf"), &model);
        // Q4_K: one 144-byte block per 256-wide row, 128 x 8 rows.
        assert_eq!(r.expert_bytes, 144 * 128 * 8);
        assert_eq!(r.shared_expert_bytes, 256 / 32 * 34 * 256);
        assert_eq!(r.types.len(), 3);
        let q8 = r.types.iter().find(|t| t.ggml_type == "Q8_0").expect("q8");
        assert_eq!(q8.tensors, 2);
        assert_eq!(q8.bytes, 2 * (256 / 32 * 34 * 256));
        assert_eq!(r.missing_bytes, 0);
        assert!(r.render().contains("MoE: 8 experts, 2 used per token"));
        // The same header in a file 1000 bytes short: a truncated download.
        let short = read_model_header(&header[..], g.file_len() - 1000).expect("parse");
        let r = inspection(Path::new("m.gguf"), &short);
        assert_eq!(r.missing_bytes, 1000);
        assert!(r.render().contains("truncated download"));
    }

    #[test]
    fn shell_quoting_of_override_patterns() {
        let flags = vec![
            "-ot".to_string(),
            r"blk\.(3)\.ffn_(up|down)_exps=CPU".to_string(),
        ];
        assert_eq!(
            shell_join(&flags),
            r"-ot 'blk\.(3)\.ffn_(up|down)_exps=CPU'"
        );
    }
}
