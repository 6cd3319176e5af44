//! The process supervisor: starts llama-server, rpc-server and vLLM processes, waits for them to
//! be ready, restarts them with exponential back-off when they crash, and stops them gracefully
//! (SIGTERM to the process group, SIGKILL after a grace period).
//!
//! Only processes named in the agent's config can be started, and only with the binary the config
//! (or PATH) names for their kind: a peer can choose arguments, never the executable. Arguments
//! are checked against that binary's own `--help` first.
//!
//! The rooms: [`Managed`] (`managed`) is one configured process and what is known of its run;
//! `run` is the course of one run (spawn, readiness, crash and back-off); `child` the operating
//! system side (spawning into its own process group, output into the log buffer, stop signals);
//! `reload` re-reads the `[[process]]` entries.

mod child;
mod managed;
mod reload;
mod run;

pub use managed::Managed;
pub use reload::SupervisorReload;

use managed::managed_from;

use crate::config::AgentConfig;
use crate::flags::{self, HelpCache};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tightwad_protocol::messages::{ProcessKind, ProcessState, ProcessStatus};

/// How often a start and a readiness probe look again.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no process named {0:?} is configured on this agent")]
    UnknownProcess(String),
    #[error("no {kind} binary is configured ([binaries] in agent.toml) or on PATH")]
    NoBinary { kind: ProcessKind },
    #[error(transparent)]
    Flags(#[from] flags::FlagError),
    #[error("{name} is already running with other arguments ({args}); stop it first")]
    AlreadyRunning { name: String, args: String },
    #[error("{name} failed: {reason}")]
    Failed { name: String, reason: String },
}

pub struct Supervisor {
    /// The configured processes; a reload ([`Supervisor::reload`]) replaces the table.
    processes: std::sync::RwLock<BTreeMap<String, Arc<Managed>>>,
    help: HelpCache,
    log_dir: PathBuf,
}

impl Supervisor {
    pub fn new(config: &AgentConfig) -> Self {
        let log_dir = config.state_dir.join("logs");
        let processes = config
            .processes
            .iter()
            .map(|p| (p.name.clone(), Arc::new(managed_from(config, p, &log_dir))))
            .collect();
        Supervisor {
            processes: std::sync::RwLock::new(processes),
            help: HelpCache::default(),
            log_dir,
        }
    }

    /// The process table now (the `Arc`s stay valid across a reload).
    pub(crate) fn table(&self) -> BTreeMap<String, Arc<Managed>> {
        match self.processes.read() {
            Ok(t) => t.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The processes that start with the agent.
    pub fn names_to_autostart(config: &AgentConfig) -> Vec<String> {
        config
            .processes
            .iter()
            .filter(|p| p.autostart)
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn get(&self, name: &str) -> Result<Arc<Managed>, SupervisorError> {
        self.table()
            .get(name)
            .cloned()
            .ok_or_else(|| SupervisorError::UnknownProcess(name.to_string()))
    }

    /// The kind and configured arguments of `name` (what `[peer]` trusts as they are).
    pub fn configured(&self, name: &str) -> Result<(ProcessKind, Vec<String>), SupervisorError> {
        let managed = self.get(name)?;
        Ok((managed.kind, managed.configured_args.clone()))
    }

    /// What a start of `name` would use: its kind, binary, arguments (`args`, else the running
    /// ones, else the configured ones) and current state. For dry runs; starts nothing.
    pub fn plan(
        &self,
        name: &str,
        args: Option<Vec<String>>,
    ) -> Result<(ProcessKind, Option<PathBuf>, Vec<String>, ProcessState), SupervisorError> {
        let managed = self.get(name)?;
        let run = managed.snapshot();
        let args = args.unwrap_or_else(|| {
            if run.args.is_empty() {
                managed.configured_args.clone()
            } else {
                run.args.clone()
            }
        });
        Ok((managed.kind, managed.binary(), args, run.state))
    }

    /// The check `start` runs on arguments, alone.
    pub async fn check_flags(
        &self,
        binary: &Path,
        kind: ProcessKind,
        args: &[String],
    ) -> Result<(), flags::FlagError> {
        let help = self.help.flags_for(binary, kind).await?;
        flags::check(binary, &help, args)
    }

    /// Where a process answers HTTP (its health-check host and port).
    pub fn endpoint(&self, name: &str) -> Option<(String, u16)> {
        let managed = self.table().get(name)?.clone();
        let port = managed.port(&managed.snapshot().args)?;
        Some((managed.health_host.clone(), port))
    }

    pub fn statuses(&self) -> Vec<ProcessStatus> {
        self.table().values().map(|m| m.status()).collect()
    }

    /// Starts a process (no-op when it already runs) and waits until it is ready or has failed.
    #[tracing::instrument(skip(self, args), fields(process = %name))]
    pub async fn start(
        &self,
        name: &str,
        args: Option<Vec<String>>,
    ) -> Result<ProcessStatus, SupervisorError> {
        let managed = self.get(name)?;
        let _one_start_at_a_time = managed.starting.lock().await;
        let current = managed.snapshot();
        if *managed.desired.borrow()
            && !matches!(current.state, ProcessState::Failed | ProcessState::Stopped)
        {
            return match args {
                Some(args) if args != current.args => Err(SupervisorError::AlreadyRunning {
                    name: name.to_string(),
                    args: current.args.join(" "),
                }),
                _ => Ok(managed.status()),
            };
        }
        let binary = managed
            .binary()
            .ok_or(SupervisorError::NoBinary { kind: managed.kind })?;
        let args = args.unwrap_or_else(|| managed.configured_args.clone());
        let help = self.help.flags_for(&binary, managed.kind).await?;
        if let Err(e) = flags::check(&binary, &help, &args) {
            managed.log(format!("refused to start: {e}"));
            managed.update(|run| run.last_error = Some(e.to_string()));
            return Err(e.into());
        }
        // A previous run loop (failed or stopped) must be gone before a new one starts.
        let previous = managed.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = previous {
            let _ = task.await;
        }
        managed.update(|run| {
            run.state = ProcessState::Starting;
            run.last_error = None;
            run.args = args.clone();
            run.pid = None;
        });
        managed.desired.send_replace(true);
        let task = tokio::spawn(run::run_loop(managed.clone(), binary, args));
        if let Ok(mut slot) = managed.task.lock() {
            *slot = Some(task);
        }
        let deadline = Instant::now() + managed.ready_timeout + Duration::from_secs(10);
        loop {
            let run = managed.snapshot();
            match run.state {
                // Stopping: the run loop is ending this start (readiness timed out, or it was
                // asked to stop) and will say how it ended; don't report the half-way state.
                ProcessState::Starting | ProcessState::Stopping if Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await
                }
                ProcessState::Failed => {
                    let tail: Vec<String> =
                        managed.logs.tail(15).into_iter().map(|l| l.line).collect();
                    return Err(SupervisorError::Failed {
                        name: name.to_string(),
                        reason: format!(
                            "{}\n--- last output ---\n{}",
                            run.last_error.unwrap_or_default(),
                            tail.join("\n")
                        ),
                    });
                }
                _ => return Ok(managed.status()),
            }
        }
    }

    /// Stops a process (SIGTERM, then SIGKILL after the grace period) and waits for it.
    #[tracing::instrument(skip(self), fields(process = %name))]
    pub async fn stop(&self, name: &str) -> Result<ProcessStatus, SupervisorError> {
        let managed = self.get(name)?;
        stop_managed(&managed).await;
        Ok(managed.status())
    }

    pub async fn restart(&self, name: &str) -> Result<ProcessStatus, SupervisorError> {
        let managed = self.get(name)?;
        let args = managed.snapshot().args;
        self.stop(name).await?;
        let args = if args.is_empty() { None } else { Some(args) };
        self.start(name, args).await
    }

    pub async fn stop_all(&self) {
        for name in self.table().keys() {
            let _ = self.stop(name).await;
        }
    }
}

/// Stop one process (SIGTERM, then SIGKILL after its grace period) and wait for its run loop.
pub(crate) async fn stop_managed(managed: &Managed) {
    managed.desired.send_replace(false);
    let task = managed.task.lock().ok().and_then(|mut t| t.take());
    if let Some(task) = task {
        let _ = task.await;
    }
    managed.update(|run| {
        if run.state != ProcessState::Failed {
            run.state = ProcessState::Stopped;
        }
    });
}
