//! Dry runs for `tightwad doctor`: what starting a process would do (flags valid for this build?
//! model files where the arguments say?) and which devices llama-server sees with RPC servers
//! attached, all without starting a server.

use crate::config::AgentConfig;
use crate::flags::run_capture;
use crate::inventory::BinaryCache;
use crate::models::ModelFolders;
use crate::supervisor::{Supervisor, SupervisorError};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tightwad_protocol::messages::{Device, ModelArg, ProcessCheck, ProcessKind};

/// `(flag, path)` for every model file named in `args` (`-m X` and `--model=X` forms).
pub fn model_args(args: &[String]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if let Some((flag, value)) = arg.split_once('=') {
            if crate::flags::MODEL_FLAGS.contains(&flag) {
                found.push((flag.to_string(), value.to_string()));
            }
        } else if crate::flags::MODEL_FLAGS.contains(&arg.as_str()) {
            if let Some(value) = iter.next() {
                found.push((arg.clone(), value.clone()));
            }
        }
    }
    found
}

/// The dry run of starting `name`.
pub async fn check_process(
    supervisor: &Supervisor,
    models: &ModelFolders,
    binaries: &BinaryCache,
    name: &str,
    args: Option<Vec<String>>,
) -> Result<ProcessCheck, SupervisorError> {
    let (kind, binary, args, state) = supervisor.plan(name, args)?;
    let flag_error = match &binary {
        Some(binary) => supervisor
            .check_flags(binary, kind, &args)
            .await
            .err()
            .map(|e| e.to_string()),
        None => Some(SupervisorError::NoBinary { kind }.to_string()),
    };
    let binary_info = match binary {
        Some(path) if kind != ProcessKind::Vllm => Some(binaries.info(kind, path).await),
        _ => None,
    };
    let wanted = model_args(&args);
    let models = models.clone();
    let model_checks = tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(flag, path)| describe_model_arg(&models, flag, path))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    Ok(ProcessCheck {
        name: name.to_string(),
        kind,
        args,
        binary: binary_info,
        flag_error,
        models: model_checks,
        state,
    })
}

fn describe_model_arg(models: &ModelFolders, flag: String, path: String) -> ModelArg {
    let full = crate::config::expand_home(Path::new(&path));
    let meta = std::fs::metadata(&full).ok().filter(|m| m.is_file());
    let (gguf, error) = match &meta {
        Some(_) => match crate::gguf::read_summary(&full) {
            Ok(summary) => (Some(summary), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    let found_elsewhere = match (&meta, full.file_name()) {
        (None, Some(file_name)) => models
            .find(&file_name.to_string_lossy())
            .map(|found| found.into_iter().map(|m| m.path).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    ModelArg {
        flag,
        path,
        exists: meta.is_some(),
        size_bytes: meta.map(|m| m.len()).unwrap_or(0),
        gguf,
        error,
        found_elsewhere,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("{0:?} is not a host:port")]
    BadAddress(String),
    #[error("no llama-server binary is configured ([binaries] in agent.toml) or on PATH")]
    NoBinary,
    #[error("`{binary} --list-devices` failed: {reason}")]
    Run { binary: String, reason: String },
}

/// `host:port` with nothing that could read as a flag or a second argument.
fn valid_rpc_address(address: &str) -> bool {
    !address.is_empty()
        && !address.starts_with('-')
        && address.len() <= 255
        && address
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']' | '_'))
        && address
            .rsplit_once(':')
            .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
}

/// The devices this host's llama-server sees with `rpc_servers` attached.
pub async fn list_devices(
    config: &AgentConfig,
    rpc_servers: &[String],
) -> Result<Vec<Device>, DevicesError> {
    for address in rpc_servers {
        if !valid_rpc_address(address) {
            return Err(DevicesError::BadAddress(address.clone()));
        }
    }
    let binary: PathBuf = config
        .binary_for(ProcessKind::LlamaServer)
        .ok_or(DevicesError::NoBinary)?;
    let joined = rpc_servers.join(",");
    let mut args: Vec<&str> = Vec::new();
    if !rpc_servers.is_empty() {
        args.extend(["--rpc", joined.as_str()]);
    }
    args.push("--list-devices");
    let text = run_capture(&binary, &args, Duration::from_secs(30))
        .await
        .map_err(|reason| DevicesError::Run {
            binary: binary.display().to_string(),
            reason,
        })?;
    Ok(parse_devices(&text))
}

/// Parses `--list-devices` output: lines `  NAME: description (TOTAL MiB, FREE MiB free)` after
/// `Available devices:`.
pub fn parse_devices(text: &str) -> Vec<Device> {
    let Some(start) = text.find("Available devices:") else {
        return Vec::new();
    };
    text[start..]
        .lines()
        .skip(1)
        .filter_map(|line| {
            let line = line.trim();
            let (name, rest) = line.split_once(": ")?;
            if name.is_empty() || name.contains(' ') {
                return None;
            }
            let (description, memory) = match rest.rsplit_once(" (") {
                Some((d, m)) => (d.to_string(), m.trim_end_matches(')')),
                None => (rest.to_string(), ""),
            };
            let mut numbers = memory
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
            Some(Device {
                name: name.to_string(),
                description,
                memory_total_mib: numbers.next(),
                memory_free_mib: numbers.next(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_flags_in_both_forms() {
        let args: Vec<String> = [
            "-m",
            "/a/t.gguf",
            "--port",
            "1",
            "--model-draft=/b/d.gguf",
            "-md",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            model_args(&args),
            vec![
                ("-m".to_string(), "/a/t.gguf".to_string()),
                ("--model-draft".to_string(), "/b/d.gguf".to_string())
            ]
        );
    }

    #[test]
    fn devices_and_addresses() {
        let devices = parse_devices(
            "load_backend: x\nAvailable devices:\n  RPC0: 127.0.0.1:50999 (24105 MiB, 24000 MiB free)\n  CUDA0: NVIDIA RTX 3060 (12288 MiB, 11000 MiB free)\n",
        );
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].name, "RPC0");
        assert_eq!(devices[0].memory_free_mib, Some(24000));
        assert_eq!(devices[1].memory_total_mib, Some(12288));
        assert!(parse_devices("Available devices:\n  (none)\n").is_empty());
        assert!(valid_rpc_address("10.0.0.3:50052"));
        assert!(!valid_rpc_address("--help"));
        assert!(!valid_rpc_address("a b:1"));
        assert!(!valid_rpc_address("host"));
    }
}
