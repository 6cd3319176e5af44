//! The course of one run: spawn, wait until ready, watch it, restart it with exponential back-off
//! after a crash, and say how it ended.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tightwad_protocol::messages::{ProcessKind, ProcessState};
use tokio::process::Child;
use tokio::sync::watch;

use super::child::{spawn, terminate};
use super::{Managed, POLL};
use crate::readiness;

/// First back-off after a crash; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before crashing starts over at [`FIRST_BACKOFF`].
const STABLE_AFTER: Duration = Duration::from_secs(60);

enum Outcome {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    StopRequested,
}

/// Runs one process until it is stopped or gives up; restarts it after crashes.
pub(super) async fn run_loop(managed: Arc<Managed>, binary: PathBuf, args: Vec<String>) {
    let mut desired = managed.desired.subscribe();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if !*desired.borrow() {
            managed.update(|run| run.state = ProcessState::Stopped);
            return;
        }
        managed.update(|run| run.state = ProcessState::Starting);
        let mut child = match spawn(&managed, &binary, &args) {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("cannot execute {}: {e}", binary.display());
                managed.log(&reason);
                managed.update(|run| {
                    run.state = ProcessState::Failed;
                    run.last_error = Some(reason);
                });
                return;
            }
        };
        let pid = child.id();
        let started = Instant::now();
        managed.update(|run| {
            run.pid = pid;
            run.started_at = Some(started);
        });
        managed.log(format!(
            "started pid {} : {} {}",
            pid.unwrap_or(0),
            binary.display(),
            args.join(" ")
        ));

        let outcome = wait_ready(&managed, &mut child, &mut desired, &args).await;
        let exit = match outcome {
            Outcome::Ready => {
                managed.update(|run| run.state = ProcessState::Ready);
                managed.log(format!(
                    "ready after {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                if managed.kind == ProcessKind::LlamaServer {
                    log_measured_buffers(&managed);
                    reclaim_after_load(&managed, &args, pid).await;
                }
                tokio::select! {
                    status = child.wait() => status.ok(),
                    _ = wait_for_stop(&mut desired) => {
                        terminate(&managed, &mut child).await;
                        managed.update(|run| run.state = ProcessState::Stopped);
                        return;
                    }
                }
            }
            Outcome::StopRequested => {
                terminate(&managed, &mut child).await;
                managed.update(|run| run.state = ProcessState::Stopped);
                return;
            }
            Outcome::TimedOut => {
                let reason = format!(
                    "not ready within {}s: {} never answered",
                    managed.ready_timeout.as_secs(),
                    readiness_probe_text(&managed, &args)
                );
                managed.log(&reason);
                terminate(&managed, &mut child).await;
                managed.update(|run| {
                    run.state = ProcessState::Failed;
                    run.last_error = Some(reason);
                });
                return;
            }
            Outcome::Exited(status) => {
                // Died before it was ever ready: a configuration problem, not a crash; retrying
                // would only hide the message.
                let reason = format!("exited during start-up ({status})");
                managed.log(&reason);
                managed.update(|run| {
                    run.state = ProcessState::Failed;
                    run.last_error = Some(reason);
                });
                return;
            }
        };
        let reason = match exit {
            Some(status) => format!("crashed ({status})"),
            None => "lost track of the process".to_string(),
        };
        managed.log(&reason);
        if !managed.restart_on_crash {
            managed.update(|run| {
                run.state = ProcessState::Failed;
                run.last_error = Some(reason);
            });
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        managed.update(|run| {
            run.state = ProcessState::BackingOff;
            run.restarts += 1;
            run.last_error = Some(reason);
        });
        managed.log(format!("restarting in {}s", backoff.as_secs()));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wait_for_stop(&mut desired) => {
                managed.update(|run| run.state = ProcessState::Stopped);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Logs the memory llama-server reported allocating per device (its `buffer size` lines; this
/// llama.cpp prints them at `-lv 4`), the measured side of a placement plan.
fn log_measured_buffers(managed: &Managed) {
    let buffers = managed.measured_buffers();
    if buffers.is_empty() {
        return;
    }
    let per_device = tightwad_placement::measure::per_device(&buffers)
        .into_iter()
        .map(|(device, bytes)| format!("{device} {:.1} MiB", bytes as f64 / (1u64 << 20) as f64))
        .collect::<Vec<_>>()
        .join(", ");
    managed.log(format!(
        "measured buffers (model + KV + compute): {per_device}"
    ));
}

/// Drops the model file's cached pages once the server has loaded it, when the agent's
/// `page_cache_reclaim` asks for it (see `crate::reclaim`), and logs what changed.
async fn reclaim_after_load(managed: &Managed, args: &[String], pid: Option<u32>) {
    let Some(model) = crate::reclaim::model_path(args) else {
        return;
    };
    let mode = managed.reclaim;
    let result = tokio::task::spawn_blocking(move || {
        let size = std::fs::metadata(&model)?.len();
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        // The RAM this server can have: the host's, or less under a cgroup memory limit.
        let ram = crate::cgroup::memory_limit().map_or(sys.total_memory(), |l| {
            l.limit_bytes.min(sys.total_memory())
        });
        if !crate::reclaim::wanted(mode, size, ram) {
            return Ok(None);
        }
        crate::reclaim::reclaim(&model, pid).map(Some)
    })
    .await;
    match result {
        Ok(Ok(Some(done))) => managed.log(done.describe()),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => managed.log(format!("page-cache reclaim skipped: {e}")),
        Err(e) => managed.log(format!("page-cache reclaim failed: {e}")),
    }
}

fn readiness_probe_text(managed: &Managed, args: &[String]) -> String {
    let port = managed.port(args).unwrap_or(0);
    match managed.kind {
        ProcessKind::RpcServer => format!("TCP {}:{port}", managed.health_host),
        _ => format!("GET http://{}:{port}/health", managed.health_host),
    }
}

async fn wait_for_stop(desired: &mut watch::Receiver<bool>) {
    loop {
        if !*desired.borrow_and_update() {
            return;
        }
        if desired.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_ready(
    managed: &Managed,
    child: &mut Child,
    desired: &mut watch::Receiver<bool>,
    args: &[String],
) -> Outcome {
    let port = managed.port(args).unwrap_or(0);
    let deadline = tokio::time::Instant::now() + managed.ready_timeout;
    let probe = async {
        loop {
            let ready = match managed.kind {
                ProcessKind::RpcServer => readiness::tcp_open(&managed.health_host, port).await,
                _ => readiness::health_ok(&managed.health_host, port).await,
            };
            if ready {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        _ = probe => Outcome::Ready,
        status = child.wait() => match status {
            Ok(status) => Outcome::Exited(status),
            Err(_) => Outcome::TimedOut,
        },
        _ = tokio::time::sleep_until(deadline) => Outcome::TimedOut,
        _ = wait_for_stop(desired) => Outcome::StopRequested,
    }
}
