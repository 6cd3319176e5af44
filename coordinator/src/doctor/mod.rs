//! `tightwad doctor`: audits the whole cluster through its agents before anything starts, and
//! says how to fix what it finds. Every failure of the field report has its check: unreachable
//! hosts and incompatible agents, different llama.cpp builds where they must match (RPC workers
//! and their coordinator), model files not where the config says, flags a build does not accept,
//! models that do not fit (MoE on small RPC workers included), draft and target vocabularies that
//! differ, the network, and whether speculation will pay at all.
//!
//! It reads the same TOML as the fleet commands: `[[hosts]]`, `[[pairings]]` and the layout
//! (`[[processes]]`, `[[pools]]`, `[[native_pairings]]`, see [`crate::cluster::layout`]).
//! Output: one line per check (`✓` / `!` / `✗` / `-` skipped) with a fix hint, or `--json`
//! (schema in `README.md`). Exit code 1 when any check failed.

pub mod agents;
pub mod cost;
pub mod live;
pub mod memory;
pub mod report;
pub mod vocab;

use std::path::Path;
use std::process::ExitCode;

use crate::cluster::layout::Layout;
use crate::cluster::{Fleet, FleetConfig};
pub use report::{Category, Check, Report, Status};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct DoctorArgs {
    /// Print the report as JSON (schema: coordinator/src/doctor/README.md).
    #[arg(long)]
    pub json: bool,
    /// Skip the checks that talk to running llama-servers (tokenizer probe, network, payoff).
    #[arg(long)]
    pub offline: bool,
}

/// Runs every check against the cluster described in `config` and prints the report.
pub async fn run(args: DoctorArgs, config: &Path) -> anyhow::Result<ExitCode> {
    let report = diagnose(&args, config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// All checks, in a stable order: hosts, builds, processes (models, flags), memory, vocabulary,
/// then the live checks against running servers.
pub async fn diagnose(args: &DoctorArgs, config: &Path) -> anyhow::Result<Report> {
    let fleet = Fleet::open(FleetConfig::load_existing(config)?)?;
    let layout = Layout::load(config)?;
    let mut checks = Vec::new();
    let cluster = agents::gather(&fleet, &layout).await;
    checks.extend(cluster.host_checks());
    checks.extend(cluster.build_checks(&layout));
    checks.extend(cluster.process_checks(&fleet).await);
    checks.extend(cluster.layout_checks(&layout));
    checks.extend(memory::checks(&cluster, &layout));
    checks.extend(vocab::metadata_checks(&cluster, &layout));
    checks.extend(cost::checks(&cluster, &layout));
    if !args.offline {
        checks.extend(live::checks(&layout).await);
    }
    if fleet.config.hosts.is_empty() && layout.pairings.is_empty() {
        checks.push(
            Check::new(
                Category::Host,
                config.display().to_string(),
                Status::Fail,
                "nothing to check: no [[hosts]] and no [[pairings]] in this config",
            )
            .hint("write one with `tightwad init` (or pass --config with the right file)"),
        );
    }
    Ok(Report::new(checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_config_is_a_failure_not_a_clean_bill_of_health() {
        let dir =
            std::env::temp_dir().join(format!("tightwad-doctor-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("tightwad.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {:?}\n",
                dir.join("state").display().to_string()
            ),
        )
        .expect("config");
        let report = diagnose(&DoctorArgs::default(), &config)
            .await
            .expect("runs");
        assert!(!report.ok);
        assert_eq!(report.checks.len(), 1);
        assert!(report.checks[0].message.contains("nothing to check"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
