//! `bench-suite`: every benchmark scenario, direct vs through the proxy, into `benchmarks/results/`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tightwad_benchmarks::suite::{self, SuiteOptions};

#[derive(Parser, Debug)]
#[command(about = "Tightwad's benchmark suite: simulation grid, real llama-servers, passthrough")]
struct Args {
    /// A smaller grid and fewer prompts (~2.5 minutes instead of ~10).
    #[arg(long)]
    quick: bool,
    /// Where the result files go.
    #[arg(long, default_value = "benchmarks/results")]
    results: PathBuf,
    /// Run only these scenarios (name prefixes: sim-grid, sim-k-sweep, real-slow-target,
    /// real-fast-target, passthrough); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only rewrite README.md and the plots from the result files already there.
    #[arg(long)]
    readme_only: bool,
    /// Simulation points measured at once (only where cores are idle, e.g. 8 on a 16-core box).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// The real scenarios' proxies end a draft after a token its model gave less than this
    /// probability (0: drafts run to k) [default: the proxy's].
    #[arg(long)]
    draft_p_min: Option<f64>,
    /// The real scenarios' draft servers sample on their device (the proxy's
    /// `draft_backend_sampling`; on this CPU the device is the CPU).
    #[arg(long)]
    draft_backend_sampling: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,tightwad_benchmarks=info".into()),
        )
        .init();
    let args = Args::parse();
    let result = if args.readme_only {
        tightwad_benchmarks::report::write_readme(&args.results)
    } else {
        suite::run(&SuiteOptions {
            quick: args.quick,
            results_dir: args.results.clone(),
            only: args.only,
            jobs: args.jobs,
            draft_p_min: args.draft_p_min,
            draft_backend_sampling: args.draft_backend_sampling,
        })
        .await
    };
    match result {
        Ok(()) => {
            println!("results in {}", args.results.join("README.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-suite failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}
