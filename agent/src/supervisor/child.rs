//! The operating system's side of a supervised process: spawned in its own process group (killed
//! with the agent), its output copied line by line into its log buffer, stopped by signals.

use std::path::Path;
use std::sync::Arc;

use tightwad_protocol::messages::{LogStream, ProcessKind, ProcessState};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::Managed;
use crate::logbuf::LogBuffer;

pub(super) fn spawn(managed: &Managed, binary: &Path, args: &[String]) -> std::io::Result<Child> {
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
pub(super) async fn terminate(managed: &Managed, child: &mut Child) {
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
