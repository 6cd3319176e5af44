//! Versions of the configured binaries: llama.cpp's build (`--version`), rpc-server's wire
//! protocol (its start-up banner), vLLM's version. Builds that must match (RPC workers and their
//! coordinator) are compared from these.

use crate::flags::run_capture;
use std::path::Path;
use std::time::Duration;
use tightwad_protocol::messages::LlamaBuild;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Parses both forms llama.cpp prints:
/// `version: 8111 (abc1234)` and `version: 0.5.0-dev (build 1, commit 0c1e570)`.
pub fn parse_llama_version(text: &str) -> Option<LlamaBuild> {
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("version:"))?
        .trim();
    let (head, rest) = match line.split_once('(') {
        Some((head, rest)) => (head.trim(), rest.trim_end_matches(')').trim()),
        None => (line, ""),
    };
    if let Ok(number) = head.parse::<u64>() {
        let commit = rest
            .split_whitespace()
            .next()
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        return Some(LlamaBuild {
            build_number: Some(number),
            version: None,
            commit,
            backend: None,
        });
    }
    let mut build_number = None;
    let mut commit = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(n) = part.strip_prefix("build") {
            build_number = n.trim().parse().ok();
        } else if let Some(c) = part.strip_prefix("commit") {
            commit = Some(c.trim().to_string()).filter(|c| !c.is_empty());
        }
    }
    Some(LlamaBuild {
        build_number,
        version: Some(head.to_string()).filter(|v| !v.is_empty()),
        commit,
        backend: None,
    })
}

/// `Starting RPC server v7.0.0` → `7.0.0`.
pub fn parse_rpc_banner(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let at = line.find("RPC server v")?;
        let version = line[at + "RPC server v".len()..]
            .split_whitespace()
            .next()?;
        Some(version.to_string())
    })
}

/// `vllm --version` prints the bare version (`0.6.3.post1`).
pub fn parse_vllm_version(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .rev()
        .find(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()) && l.contains('.'))
        .map(str::to_string)
}

pub async fn llama_build(binary: &Path) -> Result<LlamaBuild, String> {
    let text = run_capture(binary, &["--version"], Duration::from_secs(20)).await?;
    parse_llama_version(&text)
        .ok_or_else(|| format!("no `version:` line in `{} --version`", binary.display()))
}

pub async fn vllm_version(binary: &Path) -> Result<String, String> {
    let text = run_capture(binary, &["--version"], Duration::from_secs(180)).await?;
    parse_vllm_version(&text).ok_or_else(|| "no version in `vllm --version`".to_string())
}

/// Starts rpc-server on a free loopback port just long enough to read its banner (it has no
/// `--version`), then kills it.
pub async fn rpc_protocol_version(binary: &Path) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let stdbuf = Path::new("/usr/bin/stdbuf");
    let mut command = if stdbuf.is_file() {
        let mut c = tokio::process::Command::new(stdbuf);
        c.arg("-oL").arg(binary);
        c
    } else {
        tokio::process::Command::new(binary)
    };
    let mut child = command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot execute {}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(version) = parse_rpc_banner(&line) {
                return Some(version);
            }
        }
        None
    };
    let found = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten();
    let _ = child.kill().await;
    found.ok_or_else(|| "rpc-server printed no `RPC server v...` banner".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_llama_version_forms() {
        let old = parse_llama_version(
            "ggml_cuda_init: found 1 device\nversion: 8111 (abc1234)\nbuilt with cc",
        )
        .expect("old");
        assert_eq!(old.build_number, Some(8111));
        assert_eq!(old.commit.as_deref(), Some("abc1234"));
        assert_eq!(old.version, None);
        let new =
            parse_llama_version("version: 0.5.0-dev (build 1, commit 0c1e570)\n").expect("new");
        assert_eq!(new.build_number, Some(1));
        assert_eq!(new.commit.as_deref(), Some("0c1e570"));
        assert_eq!(new.version.as_deref(), Some("0.5.0-dev"));
        assert!(parse_llama_version("nothing here").is_none());
    }

    #[test]
    fn rpc_and_vllm() {
        assert_eq!(
            parse_rpc_banner("Starting RPC server v7.0.0\n  endpoint").as_deref(),
            Some("7.0.0")
        );
        assert_eq!(
            parse_vllm_version("INFO something\n0.6.3.post1\n").as_deref(),
            Some("0.6.3.post1")
        );
    }
}
