//! `tightwad`: the coordinator's command line.

mod proxy;
mod spellings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "tightwad",
    version,
    about = "Speculative decoding across your LAN, behind one OpenAI endpoint",
    after_help = "Exit codes:\n  0  ok\n  1  a check failed (doctor found a problem, status or hosts discover found a host down or changed, tune found it will not fit)\n  2  usage or configuration error (bad flags, no or an invalid config file), or the command could not run\n\nExamples:\n  tightwad proxy --target http://gpu-box:8080 --draft http://desktop:8081\n  tightwad -c tightwad.toml proxy\n  tightwad status --json\n  tightwad agent logs gpu-box/target --tail 50\n  tightwad models copy model.gguf --from gpu-box --to desktop"
)]
struct Cli {
    /// Config file: pairings and limits for `proxy`, `[[hosts]]` for the fleet commands.
    #[arg(long, short = 'c', global = true, env = "TIGHTWAD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the OpenAI API, speculating with the draft for the target.
    #[command(
        after_long_help = "Examples:\n  tightwad proxy --target http://gpu-box:8080 --draft http://desktop:8081\n  tightwad -c tightwad.toml proxy --log-format json\n  TIGHTWAD_PAIRING_DRAFT_TOKENS=6 tightwad proxy   # file, then TIGHTWAD_<KEY> / TIGHTWAD_PAIRING_<KEY>, then flags"
    )]
    Proxy(proxy::ProxyArgs),
    /// Make a running proxy re-read its configuration (what SIGHUP does): new pairings are
    /// served, removed ones refuse new requests, changed ones take their settings for new
    /// requests; requests in flight finish on the pairing they started on.
    #[command(
        after_long_help = "Examples:\n  tightwad reload\n  tightwad reload --proxy http://10.0.0.1:8088 --json"
    )]
    Reload(proxy::ReloadArgs),
    /// The config file itself: `tightwad config schema` prints its JSON Schema for editors.
    #[command(after_long_help = "Examples:\n  tightwad config schema > tightwad.schema.json")]
    Config {
        #[command(subcommand)]
        action: proxy::ConfigCommand,
    },
    /// Check every host, build, model, flag, memory fit, vocabulary, network and the predicted
    /// payoff before anything starts; non-zero exit when something is wrong.
    #[command(
        after_long_help = "Examples:\n  tightwad doctor\n  tightwad -c tightwad.toml doctor --json"
    )]
    Doctor(tightwad_coordinator::doctor::DoctorArgs),
    /// Write a commented config from flags, from the agents' inventories, or from a Python
    /// Tightwad `cluster.yaml` (`--from`).
    #[command(
        after_long_help = "Examples:\n  tightwad init --target http://gpu-box:8080 --draft http://desktop:8081\n  tightwad init --from-agents --host gpu-box=10.0.0.2 --host desktop=10.0.0.3\n  tightwad -c tightwad.toml init --from configs/cluster.yaml --json"
    )]
    Init(tightwad_coordinator::init::InitArgs),
    /// Measure the target directly and through the proxy, alternating, on a fixed prompt set.
    #[command(
        after_long_help = "Examples:\n  tightwad bench --proxy http://127.0.0.1:8088 --target http://gpu-box:8080\n  tightwad bench --proxy http://127.0.0.1:8088 --target http://gpu-box:8080 --json > bench.json"
    )]
    Bench(tightwad_coordinator::bench::BenchArgs),
    /// Chat with the model in the terminal; after each reply: rounds, drafted, accepted,
    /// tokens per round, tokens/s. `--direct` talks to the target alone, to compare.
    #[command(
        after_long_help = "Examples:\n  tightwad chat\n  tightwad -c tightwad.toml chat --direct\n  tightwad chat --proxy http://10.0.0.1:8088 --model llama-70b --system \"Answer briefly.\""
    )]
    Chat(tightwad_coordinator::chat::ChatArgs),
    #[command(flatten)]
    Fleet(tightwad_coordinator::fleet::FleetCommand),
    /// A GGUF file's metadata and, with --plan, where its tensors go on the cluster's devices
    /// (tensor split, expert offload, per-device memory, the llama-server flags).
    #[command(
        after_long_help = "Examples:\n  tightwad inspect gpt-oss-120b.gguf\n  tightwad inspect gpt-oss-120b.gguf --plan --gpu 24576 --rpc-worker desktop=12288"
    )]
    Inspect(tightwad_coordinator::inspect::InspectArgs),
    /// RAM, swap and page-cache advice for running a model on a host (mmap, mlock, no-mmap).
    #[command(
        after_long_help = "Examples:\n  tightwad tune gpt-oss-120b.gguf --host gpu-box --gpu-offload full"
    )]
    Tune(tightwad_coordinator::tune::TuneArgs),
    /// Hosts on the LAN: `tightwad hosts discover` lists the agents that announce themselves
    /// (mDNS), marked enrolled, NOT enrolled or FINGERPRINT CHANGED.
    #[command(
        after_long_help = "Examples:\n  tightwad hosts discover\n  tightwad hosts discover --json --timeout 5"
    )]
    Hosts {
        #[command(subcommand)]
        action: tightwad_coordinator::discover::HostsCommand,
    },
    /// Install, remove or check the proxy or the agent as a service of this host (systemd unit,
    /// launchd plist on macOS).
    #[command(
        after_long_help = "Examples:\n  sudo tightwad service install agent\n  tightwad service install proxy --user --dry-run\n  tightwad service status agent"
    )]
    Service {
        #[command(subcommand)]
        action: tightwad_coordinator::service::ServiceCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_long_help = "Examples:\n  tightwad completions bash > /etc/bash_completion.d/tightwad\n  tightwad completions zsh > ~/.zfunc/_tightwad"
    )]
    Completions {
        /// The shell to print the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The config file the fleet commands read and `init` writes: `-c FILE` or `./tightwad.toml`.
fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from("tightwad.toml"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Proxy(args) => proxy::run(args, cli.config).await,
        Command::Reload(args) => proxy::reload(args, cli.config).await,
        Command::Config { action } => proxy::config(action),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tightwad", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor(args) => {
            tightwad_coordinator::doctor::run(args, &config_path(cli.config)).await
        }
        Command::Init(args) => {
            tightwad_coordinator::init::run(args, &config_path(cli.config)).await
        }
        Command::Bench(args) => tightwad_coordinator::bench::run(args).await,
        Command::Chat(args) => {
            tightwad_coordinator::chat::run(args, &config_path(cli.config)).await
        }
        Command::Fleet(cmd) => {
            tightwad_coordinator::fleet::run(cmd, &config_path(cli.config)).await
        }
        Command::Inspect(args) => {
            tightwad_coordinator::inspect::run(args, &config_path(cli.config)).await
        }
        Command::Hosts { action } => {
            tightwad_coordinator::discover::run(action, &config_path(cli.config)).await
        }
        Command::Service { action } => {
            tightwad_coordinator::service::run(action, cli.config.as_deref())
        }
        Command::Tune(args) => {
            tightwad_coordinator::tune::run(args, &config_path(cli.config)).await
        }
    }
}

/// The error and its causes, `: `-separated, each once: a message that already spells out its
/// cause (thiserror's `"…: {source}"`, or a cause formatted into a context) does not get it again.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    // Old spellings still parse (hidden aliases) and each says, once, what to write instead.
    let (argv, mut warnings) = spellings::rewrite(std::env::args_os().collect());
    let matches =
        spellings::with_aliases(<Cli as clap::CommandFactory>::command()).get_matches_from(&argv);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    warnings.extend(spellings::warnings(&matches, &argv));
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand shows at least one example in its `--help`.
    #[test]
    fn every_subcommand_has_an_example_in_its_long_help() {
        fn walk(cmd: &mut clap::Command, path: String, missing: &mut Vec<String>) {
            let help = cmd.render_long_help().to_string();
            if !help.contains("Example") {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands_mut() {
                if sub.get_name() == "help" {
                    continue;
                }
                let name = format!("{path} {}", sub.get_name());
                walk(sub, name, missing);
            }
        }
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&mut cmd, "tightwad".into(), &mut missing);
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
    }
}
