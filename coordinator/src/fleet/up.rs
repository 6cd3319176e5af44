//! `tightwad up`: starts the RPC pools and native pairings of the layout, workers first, through
//! the agents. Every argument a coordinator adds here (`--rpc`, `-md`, `--spec-draft-device`) is
//! checked by the agent against its build's `--help` like any other; the agents only ever run
//! the binaries their own config names.

use crate::cluster::launch::{
    native_target_args, pool_coordinator_args, rpc_address, with_planned_flags,
};
use crate::cluster::layout::{Layout, NativePairingEntry, PoolEntry, ProcessRef};
use crate::cluster::Fleet;
use crate::doctor::{Check, DoctorArgs, Status};
use crate::progress::Steps;
use anyhow::Context;
use std::collections::BTreeSet;
use std::path::Path;
use tightwad_protocol::messages::{ProcessKind, ProcessStatus};

/// Configured (or running) arguments of `reference`, and its status, from its agent.
async fn process_status(fleet: &Fleet, reference: &ProcessRef) -> anyhow::Result<ProcessStatus> {
    let host = fleet.config.host(&reference.host)?;
    let client = fleet.connect(host).await?;
    let status = client.status().await?;
    status
        .processes
        .into_iter()
        .find(|p| p.name == reference.process)
        .with_context(|| {
            format!(
                "{} has no process named {:?} in its agent config",
                reference.host, reference.process
            )
        })
}

async fn start(
    fleet: &Fleet,
    reference: &ProcessRef,
    args: Option<Vec<String>>,
) -> anyhow::Result<ProcessStatus> {
    let host = fleet.config.host(&reference.host)?;
    let client = fleet.connect(host).await?;
    client
        .start_process(&reference.process, args)
        .await
        .with_context(|| format!("starting {reference}"))
}

/// The planner's flags for a pool with `place = true` (from what the agents report).
fn planned_flags(
    cluster: &crate::doctor::agents::Cluster,
    pool: &PoolEntry,
) -> anyhow::Result<Vec<String>> {
    let p = crate::doctor::memory::pool_placement(cluster, pool).with_context(|| {
        format!(
            "pool {}: place = true, but the coordinator's model, its GGUF details or a member's inventory is not available (run `tightwad doctor`)",
            pool.name
        )
    })?;
    let planned = tightwad_placement::plan::plan(&p.bytes, &p.target, &p.options);
    anyhow::ensure!(
        planned.fits,
        "pool {}: the placement plan does not fit the members' memory ({}): a smaller quant or context",
        pool.name,
        crate::cluster::launch::shell_join(&planned.flags)
    );
    Ok(planned.flags)
}

/// Starts a pool's workers, then its coordinator with `--rpc` naming them.
pub async fn start_pool(fleet: &Fleet, pool: &PoolEntry) -> anyhow::Result<ProcessStatus> {
    start_pool_planned(fleet, pool, None).await
}

/// [`start_pool`], the coordinator's placement flags replaced by `planned` when given.
pub async fn start_pool_planned(
    fleet: &Fleet,
    pool: &PoolEntry,
    planned: Option<&[String]>,
) -> anyhow::Result<ProcessStatus> {
    start_pool_steps(fleet, pool, planned, &mut Steps::quiet()).await
}

/// [`start_pool_planned`], each start a step of `steps`.
async fn start_pool_steps(
    fleet: &Fleet,
    pool: &PoolEntry,
    planned: Option<&[String]>,
    steps: &mut Steps,
) -> anyhow::Result<ProcessStatus> {
    let mut addresses = Vec::new();
    for worker in &pool.workers {
        steps.step(format!("pool {}: starting worker {worker}", pool.name));
        let status = start(fleet, worker, None).await?;
        anyhow::ensure!(
            status.kind == ProcessKind::RpcServer,
            "{worker} is a {}, not an rpc-server",
            status.kind
        );
        let host = fleet.config.host(&worker.host)?;
        addresses.push(rpc_address(&host.address, Some(&status)));
    }
    let base = process_status(fleet, &pool.coordinator).await?;
    let base_args = match planned {
        Some(flags) => with_planned_flags(&base.args, flags),
        None => base.args.clone(),
    };
    let args = pool_coordinator_args(&base_args, &addresses);
    steps.step(format!(
        "pool {}: starting {} with --rpc {} and waiting until it is ready",
        pool.name,
        pool.coordinator,
        addresses.join(",")
    ));
    start(fleet, &pool.coordinator, Some(args)).await
}

/// How many steps `up` shows for a pool (its workers, then its coordinator).
fn pool_steps(pool: &PoolEntry) -> u64 {
    pool.workers.len() as u64 + 1
}

/// How many steps `up` shows for a native pairing (worker, device lookup, target).
const NATIVE_STEPS: u64 = 3;

/// Starts the draft host's rpc-server, asks the target host's llama-server which device name it
/// has, then starts the target with the draft model on that device.
pub async fn start_native(
    fleet: &Fleet,
    native: &NativePairingEntry,
) -> anyhow::Result<ProcessStatus> {
    start_native_steps(fleet, native, &mut Steps::quiet()).await
}

/// [`start_native`], each stage a step of `steps`.
async fn start_native_steps(
    fleet: &Fleet,
    native: &NativePairingEntry,
    steps: &mut Steps,
) -> anyhow::Result<ProcessStatus> {
    steps.step(format!(
        "native pairing {}: starting the draft's rpc-server {}",
        native.name, native.draft_worker
    ));
    let worker = start(fleet, &native.draft_worker, None).await?;
    let worker_host = fleet.config.host(&native.draft_worker.host)?;
    let address = rpc_address(&worker_host.address, Some(&worker));
    let target_host = fleet.config.host(&native.target.host)?;
    steps.step(format!(
        "native pairing {}: asking {} which device the rpc-server {address} is",
        native.name, native.target.host
    ));
    let client = fleet.connect(target_host).await?;
    let devices = client
        .list_devices(vec![address.clone()])
        .await
        .with_context(|| {
            format!(
                "listing devices on {} with --rpc {address}",
                native.target.host
            )
        })?;
    let device = devices
        .iter()
        .find(|d| d.name.starts_with("RPC") && d.description.contains(&address))
        .or_else(|| devices.iter().find(|d| d.name.starts_with("RPC")))
        .with_context(|| {
            format!(
                "{}'s llama-server sees no RPC device at {address} (devices: {})",
                native.target.host,
                devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let base = process_status(fleet, &native.target).await?;
    let args = native_target_args(&base.args, native, &address, &device.name);
    steps.step(format!(
        "native pairing {}: starting {} with the draft on {} and waiting until it is ready",
        native.name, native.target, device.name
    ));
    start(fleet, &native.target, Some(args)).await
}

/// Doctor's failures about what `up` would start (the selected pools and native pairings, their
/// hosts and processes): the same checks, offline, so a pool of two builds or a worker too small
/// for its share is refused before anything starts.
pub async fn preflight(
    config: &Path,
    layout: &Layout,
    only: Option<&str>,
) -> anyhow::Result<Vec<Check>> {
    let args = DoctorArgs {
        json: false,
        offline: true,
    };
    let report = crate::doctor::diagnose(&args, config).await?;
    let mut subjects = BTreeSet::new();
    let mut members: Vec<&ProcessRef> = Vec::new();
    for pool in layout
        .pools
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        members.push(&pool.coordinator);
        members.extend(&pool.workers);
        subjects.insert(format!("pool {}", pool.name));
    }
    for native in layout
        .native_pairings
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        members.extend([&native.target, &native.draft_worker]);
        subjects.insert(format!("native {}", native.name));
    }
    for r in members {
        subjects.insert(r.host.clone());
        subjects.insert(r.to_string());
    }
    Ok(report
        .checks
        .into_iter()
        .filter(|c| c.status == Status::Fail && subjects.contains(&c.subject))
        .collect())
}

/// What `tightwad up`/`down` did to one pool or native pairing (printed, or as JSON).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// `pool` or `native_pairing`.
    pub kind: &'static str,
    pub name: String,
    /// The llama-server that serves it (`host/process`).
    pub process: String,
    /// Its state after the command (`ready`, `stopped`, ...).
    pub state: String,
    /// Its arguments (empty after `down`).
    pub args: Vec<String>,
}

/// Prints `up`/`down` outcomes: one line each, or a JSON list.
pub fn print(outcomes: &[Outcome], json: bool) -> anyhow::Result<()> {
    print!("{}", render(outcomes, json)?);
    Ok(())
}

/// The text [`print`] prints.
pub fn render(outcomes: &[Outcome], json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(outcomes)? + "\n");
    }
    let mut out = String::new();
    for o in outcomes {
        let kind = if o.kind == "pool" {
            "pool"
        } else {
            "native pairing"
        };
        if o.args.is_empty() {
            out.push_str(&format!("{kind} {}: {}\n", o.name, o.state));
        } else {
            out.push_str(&format!(
                "{kind} {}: {} {} ({})\n",
                o.name,
                o.process,
                o.state,
                o.args.join(" ")
            ));
        }
    }
    Ok(out)
}

pub(crate) fn state_name(state: &tightwad_protocol::messages::ProcessState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{state:?}").to_lowercase())
}

/// Starts every pool and native pairing of the layout (or only the one named `only`).
pub async fn run(
    fleet: &Fleet,
    layout: &Layout,
    only: Option<&str>,
) -> anyhow::Result<Vec<Outcome>> {
    run_with_steps(fleet, layout, only, crate::progress::Mode::Quiet).await
}

/// [`run`], showing each start as a step in `mode` (a spinner, lines on a pipe, or nothing).
pub async fn run_with_steps(
    fleet: &Fleet,
    layout: &Layout,
    only: Option<&str>,
    mode: crate::progress::Mode,
) -> anyhow::Result<Vec<Outcome>> {
    let mut started = Vec::new();
    let wanted = |name: &str| only.is_none_or(|n| n == name);
    let placing = layout.pools.iter().any(|p| p.place && wanted(&p.name));
    let total = layout
        .pools
        .iter()
        .filter(|p| wanted(&p.name))
        .map(pool_steps)
        .sum::<u64>()
        + layout
            .native_pairings
            .iter()
            .filter(|p| wanted(&p.name))
            .count() as u64
            * NATIVE_STEPS
        + u64::from(placing);
    let mut steps = Steps::new(mode, "up", total);
    // Pools that ask for placement are planned from what the agents report before anything starts.
    let cluster = if placing {
        steps.step("reading the agents' inventories for the placement plan");
        Some(crate::doctor::agents::gather(fleet, layout).await)
    } else {
        None
    };
    for pool in layout.pools.iter().filter(|p| wanted(&p.name)) {
        let planned = match (&cluster, pool.place) {
            (Some(cluster), true) => Some(planned_flags(cluster, pool)?),
            _ => None,
        };
        let status = start_pool_steps(fleet, pool, planned.as_deref(), &mut steps).await?;
        started.push(Outcome {
            kind: "pool",
            name: pool.name.clone(),
            process: pool.coordinator.to_string(),
            state: state_name(&status.state),
            args: status.args,
        });
    }
    for native in layout
        .native_pairings
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        let status = start_native_steps(fleet, native, &mut steps).await?;
        started.push(Outcome {
            kind: "native_pairing",
            name: native.name.clone(),
            process: native.target.to_string(),
            state: state_name(&status.state),
            args: status.args,
        });
    }
    anyhow::ensure!(
        !started.is_empty(),
        "nothing to start: no [[pools]] or [[native_pairings]]{} in the config",
        only.map(|n| format!(" named {n:?}")).unwrap_or_default()
    );
    steps.finish(format!("{} started", started.len()));
    Ok(started)
}

async fn stop(fleet: &Fleet, reference: &ProcessRef) -> anyhow::Result<ProcessStatus> {
    let host = fleet.config.host(&reference.host)?;
    let client = fleet.connect(host).await?;
    client
        .stop_process(&reference.process)
        .await
        .with_context(|| format!("stopping {reference}"))
}

/// `tightwad down`: stops the pools and native pairings of the layout (or the one named `only`),
/// the llama-server first, then the rpc-servers it used.
pub async fn down(
    fleet: &Fleet,
    layout: &Layout,
    only: Option<&str>,
) -> anyhow::Result<Vec<Outcome>> {
    let mut stopped = Vec::new();
    for pool in layout
        .pools
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        let status = stop(fleet, &pool.coordinator).await?;
        for worker in &pool.workers {
            stop(fleet, worker).await?;
        }
        stopped.push(Outcome {
            kind: "pool",
            name: pool.name.clone(),
            process: pool.coordinator.to_string(),
            state: state_name(&status.state),
            args: Vec::new(),
        });
    }
    for native in layout
        .native_pairings
        .iter()
        .filter(|p| only.is_none_or(|n| n == p.name))
    {
        let status = stop(fleet, &native.target).await?;
        stop(fleet, &native.draft_worker).await?;
        stopped.push(Outcome {
            kind: "native_pairing",
            name: native.name.clone(),
            process: native.target.to_string(),
            state: state_name(&status.state),
            args: Vec::new(),
        });
    }
    anyhow::ensure!(
        !stopped.is_empty(),
        "nothing to stop: no [[pools]] or [[native_pairings]]{} in the config",
        only.map(|n| format!(" named {n:?}")).unwrap_or_default()
    );
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_flags_replace_the_configured_placement_and_keep_the_rest() {
        let base: Vec<String> = [
            "-m",
            "/m/big.gguf",
            "-c",
            "4096",
            "-ngl",
            "20",
            "--tensor-split=1,1",
            "--cpu-moe",
            "--port",
            "8080",
            "-ot",
            "exps=CPU",
        ]
        .map(String::from)
        .to_vec();
        let planned: Vec<String> = ["-c", "8192", "-ngl", "99", "--n-cpu-moe", "3"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            with_planned_flags(&base, &planned).join(" "),
            "-m /m/big.gguf --port 8080 -c 8192 -ngl 99 --n-cpu-moe 3"
        );
    }

    #[test]
    fn up_and_down_report_as_lines_or_json() {
        let outcomes = vec![
            Outcome {
                kind: "pool",
                name: "big".into(),
                process: "alpha/target".into(),
                state: "ready".into(),
                args: vec!["--rpc".into(), "10.0.0.3:50052".into()],
            },
            Outcome {
                kind: "native_pairing",
                name: "n".into(),
                process: "alpha/target".into(),
                state: "stopped".into(),
                args: vec![],
            },
        ];
        assert_eq!(
            render(&outcomes, false).expect("text"),
            "pool big: alpha/target ready (--rpc 10.0.0.3:50052)\nnative pairing n: stopped\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&outcomes, true).expect("json")).expect("valid JSON");
        assert_eq!(json[0]["kind"], "pool");
        assert_eq!(json[0]["state"], "ready");
        assert_eq!(json[1]["name"], "n");
    }

    #[test]
    fn arguments_added_for_pools_and_native_pairing() {
        let base = vec!["-m".to_string(), "/m/t.gguf".to_string()];
        assert_eq!(
            pool_coordinator_args(&base, &["10.0.0.3:50052".into(), "10.0.0.4:50052".into()])[2..],
            ["--rpc", "10.0.0.3:50052,10.0.0.4:50052"]
        );
        let native = NativePairingEntry {
            name: "n".into(),
            target: "a/t".parse().expect("ref"),
            draft_worker: "b/rpc".parse().expect("ref"),
            draft_model: "/m/d.gguf".into(),
            draft_tokens: Some(6),
        };
        let args = native_target_args(&base, &native, "10.0.0.3:50052", "RPC0");
        assert_eq!(args.join(" "), "-m /m/t.gguf -md /m/d.gguf --spec-type draft-simple --rpc 10.0.0.3:50052 --spec-draft-device RPC0 -ngld 99 --spec-draft-n-max 6");
        assert_eq!(rpc_address("10.0.0.3:7420", None), "10.0.0.3:50052");
    }
}
