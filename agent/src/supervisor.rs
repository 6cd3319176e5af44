//! The process supervisor: starts llama-server, rpc-server and vLLM processes, waits for them to
//! be ready, restarts them with exponential back-off when they crash, and stops them gracefully
//! (SIGTERM to the process group, SIGKILL after a grace period).
//!
//! Only processes named in the agent's config can be started, and only with the binary the config
//! (or PATH) names for their kind: a peer can choose arguments, never the executable. Arguments
//! are checked against that binary's own `--help` first.

use crate::config::{port_from_args, AgentConfig, ProcessConfig};
use crate::flags::{self, HelpCache};
use crate::logbuf::LogBuffer;
use crate::readiness;
mod reload;

pub use reload::SupervisorReload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tightwad_protocol::messages::{LogStream, ProcessKind, ProcessState, ProcessStatus};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// First back-off after a crash; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before crashing starts over at [`FIRST_BACKOFF`].
const STABLE_AFTER: Duration = Duration::from_secs(60);
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

#[derive(Debug, Clone)]
struct RunState {
    state: ProcessState,
    pid: Option<u32>,
    started_at: Option<Instant>,
    restarts: u32,
    last_error: Option<String>,
    args: Vec<String>,
}

/// One configured process and everything known about its current run.
pub struct Managed {
    name: String,
    kind: ProcessKind,
    /// `[binaries]`/PATH's executable; the current `tightwad build` build's wins over it.
    configured_binary: Option<PathBuf>,
    active_build: crate::config::ActiveBuild,
    configured_args: Vec<String>,
    port_override: Option<u16>,
    health_host: String,
    ready_timeout: Duration,
    restart_on_crash: bool,
    grace: Duration,
    reclaim: crate::reclaim::ReclaimMode,
    pub logs: Arc<LogBuffer>,
    run: Mutex<RunState>,
    /// Whether the process should be running; the run loop watches it.
    desired: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Serialises starts, so two concurrent start requests cannot spawn two run loops.
    starting: tokio::sync::Mutex<()>,
}

impl Managed {
    /// The executable a start uses now (a build switch changes it for the next start).
    fn binary(&self) -> Option<PathBuf> {
        self.active_build
            .binary(self.kind)
            .or_else(|| self.configured_binary.clone())
    }

    pub fn kind(&self) -> ProcessKind {
        self.kind
    }

    fn snapshot(&self) -> RunState {
        match self.run.lock() {
            Ok(run) => run.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut RunState)) {
        match self.run.lock() {
            Ok(mut run) => f(&mut run),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    fn port(&self, args: &[String]) -> Option<u16> {
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

    fn log(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(process = %self.name, "{line}");
        self.logs.push(LogStream::Supervisor, line);
    }
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
        let task = tokio::spawn(run_loop(managed.clone(), binary, args));
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

pub(crate) fn managed_from(config: &AgentConfig, p: &ProcessConfig, log_dir: &Path) -> Managed {
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

enum Outcome {
    Ready,
    Exited(ExitStatus),
    TimedOut,
    StopRequested,
}

/// Runs one process until it is stopped or gives up; restarts it after crashes.
async fn run_loop(managed: Arc<Managed>, binary: PathBuf, args: Vec<String>) {
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
    let lines: Vec<String> = managed
        .logs
        .tail(4000)
        .into_iter()
        .map(|l| l.line)
        .collect();
    let buffers = tightwad_placement::measure::parse_log(lines.iter().map(String::as_str));
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

fn spawn(managed: &Managed, binary: &Path, args: &[String]) -> std::io::Result<Child> {
    // stdbuf makes C stdio line-buffered so a banner printed with printf (rpc-server's version)
    // reaches the log at once instead of when a 4 KiB pipe buffer fills; it execs the binary,
    // so the pid stays the server's.
    let stdbuf = Path::new("/usr/bin/stdbuf");
    let mut command = if stdbuf.is_file() {
        let mut c = Command::new(stdbuf);
        c.arg("-oL").arg("-eL").arg(binary);
        c
    } else {
        Command::new(binary)
    };
    if managed.kind == ProcessKind::Vllm {
        command.arg("serve");
    }
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Own process group: stop signals reach vLLM's worker processes too.
        .process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // it makes the kernel kill the server if the agent dies without stopping it.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let mut child = command.spawn()?;
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(pump(stdout, LogStream::Stdout, managed.logs.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(pump(stderr, LogStream::Stderr, managed.logs.clone()));
    }
    Ok(child)
}

/// Copies a child's output into its log buffer, line by line (lossy UTF-8: servers print
/// whatever their models contain).
async fn pump(reader: impl AsyncRead + Unpin, stream: LogStream, logs: Arc<LogBuffer>) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                logs.push(stream, text.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}

/// SIGTERM to the process group, SIGKILL after the grace period.
async fn terminate(managed: &Managed, child: &mut Child) {
    managed.update(|run| run.state = ProcessState::Stopping);
    if let Some(pid) = child.id() {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        match tokio::time::timeout(managed.grace, child.wait()).await {
            Ok(_) => {
                managed.log(format!("stopped pid {pid} (SIGTERM)"));
                return;
            }
            Err(_) => {
                managed.log(format!(
                    "pid {pid} ignored SIGTERM for {}s: SIGKILL",
                    managed.grace.as_secs()
                ));
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    let _ = child.kill().await;
}
