//! A process's output: the last lines in memory (for `tightwad agent logs`), every line in a log
//! file (for after the fact), and a broadcast for followers.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use tightwad_protocol::messages::{LogLine, LogStream};
use tokio::sync::broadcast;

/// Lines kept in memory per process.
pub const RING_LINES: usize = 2000;

pub struct LogBuffer {
    lines: Mutex<VecDeque<LogLine>>,
    file: Mutex<Option<std::fs::File>>,
    followers: broadcast::Sender<LogLine>,
}

impl LogBuffer {
    /// A buffer that also appends to `file` (created if missing; logging goes on without it if
    /// it cannot be opened).
    pub fn new(file: &Path) -> Self {
        let opened = file
            .parent()
            .map(std::fs::create_dir_all)
            .transpose()
            .and_then(|_| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
            });
        let file = match opened {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %e, "cannot open process log file");
                None
            }
        };
        let (followers, _) = broadcast::channel(1024);
        LogBuffer {
            lines: Mutex::new(VecDeque::with_capacity(RING_LINES)),
            file: Mutex::new(file),
            followers,
        }
    }

    pub fn push(&self, stream: LogStream, line: String) {
        let entry = LogLine { stream, line };
        if let Ok(mut file) = self.file.lock() {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "[{stream:?}] {}", entry.line);
            }
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == RING_LINES {
                lines.pop_front();
            }
            lines.push_back(entry.clone());
        }
        let _ = self.followers.send(entry);
    }

    /// The last `n` lines and a receiver for the ones after them (subscribed first, so no line
    /// falls between the two).
    pub fn tail_and_follow(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let receiver = self.followers.subscribe();
        (self.tail(n), receiver)
    }

    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        self.lines
            .lock()
            .map(|lines| {
                lines
                    .iter()
                    .skip(lines.len().saturating_sub(n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_last_lines_and_writes_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs").join("p.log");
        let buffer = LogBuffer::new(&path);
        for i in 0..RING_LINES + 5 {
            buffer.push(LogStream::Stdout, format!("line {i}"));
        }
        let tail = buffer.tail(2);
        assert_eq!(tail[1].line, format!("line {}", RING_LINES + 4));
        assert_eq!(buffer.tail(usize::MAX).len(), RING_LINES);
        let text = std::fs::read_to_string(path).expect("log file");
        assert!(text.contains("line 0"));
    }
}
