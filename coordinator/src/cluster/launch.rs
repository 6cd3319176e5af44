//! The command lines the coordinator adds to configured processes: a pool coordinator's `--rpc`,
//! a native pairing's remote draft, the placement planner's flags. `tightwad up` runs them and
//! `tightwad doctor` checks exactly the same arguments, so both take them from here.

use super::layout::{host_ip, NativePairingEntry};
use tightwad_protocol::messages::ProcessStatus;

/// rpc-server's port when its arguments name none (its own default).
pub const DEFAULT_RPC_PORT: u16 = 50052;

/// `ip:port` other hosts reach a worker's rpc-server at: the worker host's address from
/// `[[hosts]]` and the port from the process's arguments.
pub fn rpc_address(agent_address: &str, worker: Option<&ProcessStatus>) -> String {
    let port = worker.and_then(|w| w.port).unwrap_or(DEFAULT_RPC_PORT);
    format!("{}:{port}", host_ip(agent_address))
}

/// A pool coordinator's arguments: its own, plus `--rpc` with every worker (unless it names its
/// RPC servers itself).
pub fn pool_coordinator_args(base: &[String], workers: &[String]) -> Vec<String> {
    let mut args = base.to_vec();
    if !args.iter().any(|a| a == "--rpc" || a.starts_with("--rpc=")) && !workers.is_empty() {
        args.push("--rpc".into());
        args.push(workers.join(","));
    }
    args
}

/// The target's arguments for native pairing: its own, plus the draft model placed on the remote
/// RPC device (`-md … --spec-type draft-simple --rpc HOST:PORT --spec-draft-device RPC0 -ngld 99`,
/// verified in notes/backends.md).
pub fn native_target_args(
    base: &[String],
    native: &NativePairingEntry,
    worker_address: &str,
    device: &str,
) -> Vec<String> {
    let mut args = base.to_vec();
    if args
        .iter()
        .any(|a| a == "-md" || a == "--model-draft" || a == "--spec-draft-model")
    {
        return args;
    }
    args.extend(
        [
            "-md",
            native.draft_model.as_str(),
            "--spec-type",
            "draft-simple",
            "--rpc",
            worker_address,
            "--spec-draft-device",
            device,
            "-ngld",
            "99",
        ]
        .map(String::from),
    );
    if let Some(k) = native.draft_tokens {
        args.extend(["--spec-draft-n-max".to_string(), k.to_string()]);
    }
    args
}

/// llama-server flags the placement planner owns (and whether each takes a value): a planned
/// start drops the configured ones.
const PLACEMENT_FLAGS: &[(&str, bool)] = &[
    ("-c", true),
    ("--ctx-size", true),
    ("-ngl", true),
    ("--gpu-layers", true),
    ("--n-gpu-layers", true),
    ("-ts", true),
    ("--tensor-split", true),
    ("-ot", true),
    ("--override-tensor", true),
    ("-ncmoe", true),
    ("--n-cpu-moe", true),
    ("-cmoe", false),
    ("--cpu-moe", false),
];

/// `base` without the placement flags, then the plan's flags.
pub fn with_planned_flags(base: &[String], planned: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < base.len() {
        let arg = &base[i];
        let owned = PLACEMENT_FLAGS
            .iter()
            .find(|(flag, _)| arg == flag || arg.starts_with(&format!("{flag}=")));
        match owned {
            Some((flag, takes_value)) => {
                i += if *takes_value && arg == flag { 2 } else { 1 };
            }
            None => {
                args.push(arg.clone());
                i += 1;
            }
        }
    }
    args.extend(planned.iter().cloned());
    args
}

/// Arguments quoted for a POSIX shell where needed (`-ot` patterns hold `\`, `|`, `(`).
pub fn shell_join(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.,=/:".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
