//! The proxy's own log, kept in memory so `tightwad logs proxy` can show and follow it from any
//! machine: the last [`RING_LINES`] lines of its tracing output (without colours), numbered, served
//! on the authenticated `GET /v1/tightwad/logs?after=SEQ&tail=N`.
//!
//! Why a ring and not a file: the proxy often runs under systemd or in a container where a log
//! file's location is a guess, and the agents' process logs are already reached over the network;
//! the same reach for the proxy means one command for every log. stderr still gets every line.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use serde::Serialize;

/// Lines kept in memory.
pub const RING_LINES: usize = 2000;

/// One numbered line (numbers start at 1 and never repeat within a run).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RingLine {
    pub seq: u64,
    pub line: String,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<RingLine>,
    next: u64,
}

fn ring() -> &'static Mutex<Ring> {
    static RING: OnceLock<Mutex<Ring>> = OnceLock::new();
    RING.get_or_init(Default::default)
}

/// Appends one log line (the subscriber's writer calls this; tests may too).
pub fn push(line: &str) {
    let Ok(mut ring) = ring().lock() else { return };
    ring.next += 1;
    let seq = ring.next;
    ring.lines.push_back(RingLine {
        seq,
        line: line.to_string(),
    });
    while ring.lines.len() > RING_LINES {
        ring.lines.pop_front();
    }
}

/// Lines numbered above `after`, at most the last `tail` of them, and the highest number so far
/// (the next call's `after`).
pub fn read(after: u64, tail: usize) -> (Vec<RingLine>, u64) {
    let Ok(ring) = ring().lock() else {
        return (Vec::new(), after);
    };
    let newer: Vec<&RingLine> = ring.lines.iter().filter(|l| l.seq > after).collect();
    let skip = newer.len().saturating_sub(tail);
    (
        newer.into_iter().skip(skip).cloned().collect(),
        ring.next.max(after),
    )
}

/// A `tracing_subscriber` writer into the ring: each formatted event arrives in one `write`
/// (the fmt layer buffers it), possibly several lines long.
#[derive(Default)]
pub struct RingWriter {
    partial: Vec<u8>,
}

impl Write for RingWriter {
    /// One `write` ending in a newline is one event: a newline or other control character inside
    /// it (a client-supplied value, such as a `model` name with a line break) is escaped, so it
    /// cannot forge a line of its own.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        if self.partial.last() == Some(&b'\n') {
            let event = std::mem::take(&mut self.partial);
            let text = String::from_utf8_lossy(&event[..event.len() - 1]);
            push(&escape_controls(text.trim_end_matches('\r')));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            push(&escape_controls(&String::from_utf8_lossy(&rest)));
        }
        Ok(())
    }
}

/// `s` with control characters (line breaks included) written as escapes (`\n`, `\u{1b}`).
pub fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Drop for RingWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// `MakeWriter` for the subscriber: `fmt::layer().with_ansi(false).with_writer(logring::make)`.
pub fn make() -> RingWriter {
    RingWriter::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_split_and_read_after_a_number() {
        let (_, before) = read(0, 0);
        let mut w = make();
        w.write_all(b"first line\n").expect("write");
        w.write_all(b"second ").expect("write");
        w.write_all(b"half\n").expect("write");
        // One event whose text holds a line break (a client's `model`): still one line.
        w.write_all(b"WARN model \"x\nINFO forged\"\n")
            .expect("write");
        drop(w);
        let (lines, next) = read(before, 10);
        let texts: Vec<&str> = lines.iter().map(|l| l.line.as_str()).collect();
        assert!(
            texts.ends_with(&[
                "first line",
                "second half",
                "WARN model \"x\\nINFO forged\""
            ]),
            "{texts:?}"
        );
        assert!(next >= before + 3);
        let (last, _) = read(before, 1);
        assert_eq!(last.len(), 1);
        assert_eq!(read(next, 10).0.len(), 0);
    }
}
