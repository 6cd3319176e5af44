//! Switching a host to another build: the record saved, the supervisor pointed at the new
//! binaries, the running llama.cpp processes restarted onto them (each llama-server once it is
//! idle), and everything returned to the previous build if one of them does not come back.

use super::record::{self, Record};
use super::{io_err, report, BuildContext, BuildError, Progress};
use std::time::{Duration, Instant};
use tightwad_protocol::messages::{BuildStage, ProcessKind, ProcessState};

/// How long a switch waits for a llama-server to finish the requests it is processing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Records `next`, points the supervisor at its binaries and restarts the running llama.cpp
/// processes onto them. If a process does not come back, everything returns to `from`.
pub(super) async fn switch_to(
    ctx: &BuildContext<'_>,
    from: &Record,
    next: &Record,
    progress: &Progress,
) -> Result<Vec<String>, BuildError> {
    let state = &ctx.config.state_dir;
    record::save(state, next).map_err(io_err(state))?;
    ctx.config
        .active_build
        .set(record::bin_dir(state, &next.current));
    match restart_running(ctx, progress).await {
        Ok(switched) => Ok(switched),
        Err(e) => {
            tracing::error!(error = %e, "switch failed: returning to the previous build");
            let _ = record::save(state, from);
            ctx.config
                .active_build
                .set(record::bin_dir(state, &from.current));
            let _ = restart_running(ctx, progress).await;
            Err(e)
        }
    }
}

/// Restarts every running llama-server and rpc-server (rpc-servers first: a llama-server may
/// use them), each llama-server only once it has no request in progress.
async fn restart_running(
    ctx: &BuildContext<'_>,
    progress: &Progress,
) -> Result<Vec<String>, BuildError> {
    let mut running: Vec<_> = ctx
        .supervisor
        .statuses()
        .into_iter()
        .filter(|s| matches!(s.kind, ProcessKind::LlamaServer | ProcessKind::RpcServer))
        .filter(|s| {
            matches!(
                s.state,
                ProcessState::Ready | ProcessState::Starting | ProcessState::BackingOff
            )
        })
        .collect();
    running.sort_by_key(|s| s.kind != ProcessKind::RpcServer);
    let total = running.len() as u64;
    let mut switched = Vec::new();
    for (index, status) in running.into_iter().enumerate() {
        if status.kind == ProcessKind::LlamaServer {
            if let Some((host, port)) = ctx.supervisor.endpoint(&status.name) {
                report(
                    progress,
                    BuildStage::Switch,
                    index as u64,
                    total,
                    format!("{}: waiting until idle", status.name),
                );
                wait_idle(&host, port).await;
            }
        }
        report(
            progress,
            BuildStage::Switch,
            index as u64,
            total,
            format!("restarting {} on the new build", status.name),
        );
        ctx.supervisor
            .restart(&status.name)
            .await
            .map_err(|e| BuildError::Switch(format!("{}: {e}", status.name)))?;
        switched.push(status.name);
    }
    report(progress, BuildStage::Switch, total, total, "switched");
    Ok(switched)
}

/// Waits (bounded) until llama-server's `/slots` shows no slot processing, so a restart does not
/// cut a generation off. Servers without `/slots` are not waited for.
async fn wait_idle(host: &str, port: u16) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline {
        let Some((200, body)) =
            crate::readiness::http_call(host, port, "GET", "/slots", None, Duration::from_secs(5))
                .await
        else {
            return;
        };
        let busy = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .map(|slots| {
                slots.iter().any(|s| {
                    s.get("is_processing").and_then(serde_json::Value::as_bool) == Some(true)
                })
            })
            .unwrap_or(false);
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
