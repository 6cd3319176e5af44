//! `tightwad tune MODEL.gguf`: RAM, swap and page-cache advice for running a model on a host,
//! with the `--mlock` / `--no-mmap` (`-lm mlock` / `-lm none`) trade-offs spelled out in numbers.
//! The host's memory comes from its agent's inventory (`--host`), else from this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;
use tightwad_placement::gguf::read_model;
use tightwad_placement::plan::ModelBytes;

use crate::cluster::{Fleet, FleetConfig};
use crate::doctor::report::gib;

#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  tightwad tune ~/models/gpt-oss-120b.gguf\n  tightwad tune model.gguf --load --port 8080 -- -ngl 99 -lm none -c 8192\n  tightwad -c tightwad.toml tune gpt-oss-120b.gguf --host gpu-box --gpu-offload full --json"
)]
pub struct TuneArgs {
    /// The GGUF file (read locally for its size and shape).
    pub model: PathBuf,
    /// The agent host the model will run on (its RAM from the inventory).
    #[arg(long)]
    pub host: Option<String>,
    /// Context tokens (default: the model's training context).
    #[arg(long, short = 'C')]
    pub ctx: Option<u64>,
    /// How much of the model lives on GPUs: `none` (CPU inference), `partial`, `full`.
    #[arg(long, value_enum, default_value_t = Offload::None)]
    pub gpu_offload: Offload,
    /// Print the advice as JSON (with --load: no progress lines).
    #[arg(long)]
    pub json: bool,
    /// Load the model here: read the file once sequentially, start llama-server with the
    /// arguments after `--`, wait for /health, drop the file from the page cache, report, and
    /// keep serving until the server exits (Ctrl-C stops it).
    #[arg(long)]
    pub load: bool,
    /// llama-server binary for `--load` (default: `llama-server` on PATH).
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// Port for `--load`.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Seconds `--load` waits for /health.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
    /// llama-server arguments for `--load` (after `--`; `-m` and `--port` are added).
    #[arg(last = true)]
    pub server_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Offload {
    None,
    Partial,
    Full,
}

/// Memory of the host, in bytes.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct HostMemory {
    pub ram_total: u64,
    pub ram_available: u64,
    /// `None` where the agent does not report swap.
    pub swap_total: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Advice,
    Warning,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Advice {
    pub level: Level,
    pub message: String,
}

fn item(level: Level, message: String) -> Advice {
    Advice { level, message }
}

/// The advice for a `model_bytes` model needing `kv_bytes` of cache on a host with `mem`.
pub fn advise(model_bytes: u64, kv_bytes: u64, mem: HostMemory, offload: Offload) -> Vec<Advice> {
    let mut out = Vec::new();
    let need = model_bytes + kv_bytes;
    let os_reserve = 2u64 << 30;
    match offload {
        Offload::Full => {
            out.push(item(Level::Advice, format!(
                "all weights on GPUs: after the load, the {} the file occupies in the page cache is a dead copy; start llama-server with `-lm none` (older builds `--no-mmap`) and let the agent reclaim it (page_cache_reclaim, on by default for files over a quarter of RAM)",
                gib(model_bytes)
            )));
            if model_bytes > mem.ram_available {
                out.push(item(Level::Warning, format!(
                    "`-lm none` stages the weights through RAM while loading: {} model, {} RAM available; keep mmap (the default) on this host, its pages are only cache",
                    gib(model_bytes),
                    gib(mem.ram_available)
                )));
            }
        }
        Offload::None | Offload::Partial => {
            if need + os_reserve > mem.ram_total {
                out.push(item(Level::Warning, format!(
                    "the model and its KV cache ({} + {}) do not fit in {} RAM with ~2 GiB for the system: with mmap the kernel re-reads weights from disk every token (seconds per token); use a smaller quantization, a shorter context, or offload layers to a GPU",
                    gib(model_bytes),
                    gib(kv_bytes),
                    gib(mem.ram_total)
                )));
            } else if need > mem.ram_available {
                out.push(item(Level::Warning, format!(
                    "{} needed but only {} RAM is available now: other programs will be swapped out or model pages evicted under pressure; stop them, or pin the model with `-lm mmap+mlock` (`--mlock`; needs `ulimit -l unlimited` and fails the load rather than swapping)",
                    gib(need),
                    gib(mem.ram_available)
                )));
            } else {
                out.push(item(
                    Level::Ok,
                    format!(
                        "{} of model and KV fit in {} available RAM",
                        gib(need),
                        gib(mem.ram_available)
                    ),
                ));
            }
            out.push(item(Level::Advice, "keep mmap (the default) for CPU-resident weights: the page cache is the weights, nothing is copied, and the kernel may drop them under pressure (slow but alive); `--mlock` trades that for guaranteed residency".into()));
        }
    }
    match mem.swap_total {
        Some(0) if need * 2 > mem.ram_total => out.push(item(Level::Advice, format!(
            "no swap: `-lm none` loads and the KV cache are anonymous memory, which without swap means the OOM killer when RAM runs out. A swapfile as a safety net: sudo fallocate -l {g}G /swapfile && sudo chmod 600 /swapfile && sudo mkswap /swapfile && sudo swapon /swapfile (mmap'd weights never go to swap; they are file pages)",
            g = (need / 2).div_ceil(1 << 30).max(4)
        ))),
        Some(s) if s > 0 => out.push(item(Level::Ok, format!("{} swap: a safety net for anonymous memory (KV cache, `-lm none` weights); mmap'd weights are re-read from the file instead", gib(s)))),
        _ => {}
    }
    out
}

async fn host_memory(args: &TuneArgs, config: &Path) -> anyhow::Result<HostMemory> {
    if let Some(name) = &args.host {
        let fleet = Fleet::open(FleetConfig::load_existing(config)?)?;
        let entry = fleet
            .config
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .with_context(|| format!("no host {name:?} in the config's [[hosts]]"))?
            .clone();
        let status = fleet.connect(&entry).await?.status().await?;
        return Ok(HostMemory {
            ram_total: status.inventory.host.ram_total_bytes,
            ram_available: status.inventory.host.ram_available_bytes,
            swap_total: None,
        });
    }
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    Ok(HostMemory {
        ram_total: sys.total_memory(),
        ram_available: sys.available_memory(),
        swap_total: Some(sys.total_swap()),
    })
}

/// `--load`: prefetch, start, wait, reclaim, report, then serve until the server exits.
async fn load(args: &TuneArgs) -> anyhow::Result<ExitCode> {
    use tightwad_placement::pagecache;
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
    let started = std::time::Instant::now();
    let mode = crate::progress::Progress::mode(args.json);
    let mut reading = crate::progress::Progress::new(
        mode,
        crate::progress::Unit::Bytes,
        format!("tune --load: reading {}", args.model.display()),
        0,
    );
    let read = pagecache::prefetch_with_progress(&args.model, |done, size| {
        reading.set_total(size);
        reading.set(done);
    });
    reading.finish();
    let read = read.with_context(|| format!("reading {}", args.model.display()))?;
    println!(
        "pre-read {} in {:.1}s",
        mib(read),
        started.elapsed().as_secs_f64()
    );
    let mut steps = crate::progress::Steps::new(mode, "tune --load", 2);
    let binary = args
        .llama_server
        .clone()
        .unwrap_or_else(|| PathBuf::from("llama-server"));
    steps.step(format!(
        "starting {} on port {} and waiting for /health (at most {} s)",
        binary.display(),
        args.port,
        args.timeout
    ));
    let mut child = tokio::process::Command::new(&binary)
        .arg("-m")
        .arg(&args.model)
        .args(["--port", &args.port.to_string()])
        .args(&args.server_args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/health", args.port);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("llama-server exited during the load ({status}); its output is above");
        }
        if let Ok(r) = client.get(&url).send().await {
            if r.status().is_success() {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill().await;
            anyhow::bail!("llama-server did not answer {url} within {}s", args.timeout);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    steps.step("dropping the model file from the page cache");
    println!("ready after {:.1}s", started.elapsed().as_secs_f64());
    let rss = || {
        pid.and_then(|p| pagecache::process_rss(p).ok())
            .unwrap_or((0, 0))
    };
    let rss_before = rss();
    let (before, total) = pagecache::resident_bytes(&args.model)?;
    pagecache::drop_cache(&args.model)?;
    let (after, _) = pagecache::resident_bytes(&args.model)?;
    let rss_after = rss();
    println!(
        "reclaimed: {} of {} cached before, {} after; server RSS {} (file-backed {}) before, {} (file-backed {}) after",
        mib(before),
        mib(total),
        mib(after),
        mib(rss_before.0),
        mib(rss_before.1),
        mib(rss_after.0),
        mib(rss_after.1)
    );
    steps.finish("loaded");
    if after > total / 2 {
        println!("  the server maps the file, so its pages stay cached: add `-lm none` (older builds `--no-mmap`) for reclaim to free them");
    }
    println!("serving on port {}; Ctrl-C stops it", args.port);
    tokio::select! {
        status = child.wait() => {
            let status = status?;
            Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn run(args: TuneArgs, config: &Path) -> anyhow::Result<ExitCode> {
    if args.load {
        return load(&args).await;
    }
    let model = read_model(&args.model)
        .with_context(|| format!("reading the GGUF header of {}", args.model.display()))?;
    let bytes = ModelBytes::from_gguf(&model);
    let ctx = args.ctx.filter(|c| *c > 0).unwrap_or(bytes.context_length);
    let kv = bytes.kv_per_token_layer * bytes.n_layer as u64 * ctx;
    let mem = host_memory(&args, config).await?;
    let advice = advise(model.file_len, kv, mem, args.gpu_offload);
    let warn = advice.iter().any(|a| a.level == Level::Warning);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": args.model.display().to_string(), "model_bytes": model.file_len,
                "kv_bytes": kv, "context": ctx, "host": args.host, "memory": mem,
                "gpu_offload": args.gpu_offload, "advice": advice,
            }))?
        );
    } else {
        println!(
            "{}: {} on disk, KV {} at {ctx} tokens; host RAM {} ({} available){}",
            args.model.display(),
            gib(model.file_len),
            gib(kv),
            gib(mem.ram_total),
            gib(mem.ram_available),
            mem.swap_total
                .map(|s| format!(", swap {}", gib(s)))
                .unwrap_or_default()
        );
        for a in &advice {
            let mark = match a.level {
                Level::Ok => "✓",
                Level::Advice => "·",
                Level::Warning => "!",
            };
            println!("  {mark} {}", a.message);
        }
    }
    Ok(if warn {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn advice_follows_the_numbers() {
        let mem = HostMemory {
            ram_total: 64 * GIB,
            ram_available: 40 * GIB,
            swap_total: Some(0),
        };
        // 60 GB on a 64 GB host with 40 available: too little available, and no swap.
        let a = advise(60 * GIB, GIB, mem, Offload::None);
        assert!(
            a[0].level == Level::Warning && a[0].message.contains("only 40.0 GiB RAM is available"),
            "{a:?}"
        );
        assert!(
            a.iter().any(|x| x.message.contains("fallocate -l 31G")),
            "{a:?}"
        );
        // 70 GB cannot fit at all.
        let a = advise(70 * GIB, GIB, mem, Offload::None);
        assert!(a[0].message.contains("do not fit"), "{a:?}");
        // A small model fits; fully offloaded, the advice is to reclaim the page cache.
        let a = advise(8 * GIB, GIB, mem, Offload::None);
        assert_eq!(a[0].level, Level::Ok);
        let a = advise(8 * GIB, GIB, mem, Offload::Full);
        assert!(a[0].message.contains("-lm none"), "{a:?}");
        assert!(a.iter().all(|x| x.level != Level::Warning), "{a:?}");
    }
}
