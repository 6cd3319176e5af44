//! One configured process ([`Managed`]) and everything known about its current run, made from
//! its `[[process]]` entry.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tightwad_protocol::messages::{LogStream, ProcessKind, ProcessState, ProcessStatus};
use tokio::sync::watch;

use crate::config::{port_from_args, AgentConfig, ProcessConfig};
use crate::logbuf::LogBuffer;

#[derive(Debug, Clone)]
pub(super) struct RunState {
    pub(super) state: ProcessState,
    pub(super) pid: Option<u32>,
    pub(super) started_at: Option<Instant>,
    pub(super) restarts: u32,
    pub(super) last_error: Option<String>,
    pub(super) args: Vec<String>,
}

/// One configured process and everything known about its current run.
pub struct Managed {
    pub(super) name: String,
    pub(super) kind: ProcessKind,
    /// `[binaries]`/PATH's executable; the current `tightwad build` build's wins over it.
    pub(super) configured_binary: Option<PathBuf>,
    pub(super) active_build: crate::config::ActiveBuild,
    pub(super) configured_args: Vec<String>,
    pub(super) port_override: Option<u16>,
    pub(super) health_host: String,
    pub(super) ready_timeout: Duration,
    pub(super) restart_on_crash: bool,
    pub(super) grace: Duration,
    pub(super) reclaim: crate::reclaim::ReclaimMode,
    pub logs: Arc<LogBuffer>,
    pub(super) run: Mutex<RunState>,
    /// Whether the process should be running; the run loop watches it.
    pub(super) desired: watch::Sender<bool>,
    pub(super) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises starts, so two concurrent start requests cannot spawn two run loops.
    pub(super) starting: tokio::sync::Mutex<()>,
}

impl Managed {
    /// The executable a start uses now (a build switch changes it for the next start).
    pub(super) fn binary(&self) -> Option<PathBuf> {
        self.active_build
            .binary(self.kind)
            .or_else(|| self.configured_binary.clone())
    }

    pub fn kind(&self) -> ProcessKind {
        self.kind
    }

    pub(super) fn snapshot(&self) -> RunState {
        match self.run.lock() {
            Ok(run) => run.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut RunState)) {
        match self.run.lock() {
            Ok(mut run) => f(&mut run),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    pub(super) fn port(&self, args: &[String]) -> Option<u16> {
        self.port_override
            .or_else(|| port_from_args(args))
            .or(match self.kind {
                ProcessKind::LlamaServer => Some(8080),
                ProcessKind::RpcServer => Some(50052),
                ProcessKind::Vllm => Some(8000),
            })
    }

    pub fn status(&self) -> ProcessStatus {
        let run = self.snapshot();
        let alive = matches!(
            run.state,
            ProcessState::Starting | ProcessState::Ready | ProcessState::Stopping
        );
        ProcessStatus {
            name: self.name.clone(),
            kind: self.kind,
            state: run.state,
            pid: if alive { run.pid } else { None },
            port: self.port(&run.args),
            uptime_secs: if alive {
                run.started_at.map(|t| t.elapsed().as_secs())
            } else {
                None
            },
            restarts: run.restarts,
            last_error: run.last_error,
            args: run.args,
        }
    }

    /// The memory llama-server reported allocating per device and kind (its `buffer size` lines,
    /// printed at `-lv 4`) in the last 4000 lines of its log: the measured side of a plan.
    pub fn measured_buffers(&self) -> Vec<tightwad_placement::measure::Buffer> {
        let lines: Vec<String> = self.logs.tail(4000).into_iter().map(|l| l.line).collect();
        tightwad_placement::measure::parse_log(lines.iter().map(String::as_str))
    }

    pub(super) fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(process = %self.name, "{line}");
        self.logs.push(LogStream::Supervisor, line);
    }
}

pub(super) fn managed_from(config: &AgentConfig, p: &ProcessConfig, log_dir: &Path) -> Managed {
    let (desired, _) = watch::channel(false);
    Managed {
        name: p.name.clone(),
        kind: p.kind,
        configured_binary: config.configured_binary(p.kind),
        active_build: config.active_build.clone(),
        configured_args: p.args.clone(),
        port_override: p.port,
        health_host: p.health_host.clone().unwrap_or_else(|| "127.0.0.1".into()),
        ready_timeout: Duration::from_secs(p.ready_timeout_s.unwrap_or(config.ready_timeout_s)),
        restart_on_crash: p.restart.unwrap_or(true),
        grace: Duration::from_secs(config.stop_grace_s),
        reclaim: config.page_cache_reclaim,
        logs: Arc::new(LogBuffer::new(
            &log_dir.join(format!("{}.log", sanitize(&p.name))),
        )),
        run: Mutex::new(RunState {
            state: ProcessState::Stopped,
            pid: None,
            started_at: None,
            restarts: 0,
            last_error: None,
            args: p.args.clone(),
        }),
        desired,
        task: Mutex::new(None),
        starting: tokio::sync::Mutex::new(()),
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
