//! Progress on stderr for long CLI work (model copies, benchmarks, builds, `up`, `swap`,
//! `agent start`, `tune --load`), in one place so every command shows it the same way:
//! [`Progress`] counts bytes or items, [`Steps`] names the stages of work made of a few slow steps.
//!
//! Three modes, chosen once per command by [`Progress::mode`]:
//! - a live `indicatif` bar when stderr is a terminal (a person is watching);
//! - plain lines (`label: 40% (400/1000 MiB)`), at most one per tenth of the work, when stderr is
//!   a file or a pipe (CI logs, scripts): a bar's carriage returns would make those unreadable;
//! - nothing with `--json`, so stdout carries only the machine-readable report and stderr stays
//!   quiet for scripts that parse both.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bar,
    Lines,
    Quiet,
}

/// What is counted: bytes get sizes and a rate, items a plain count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Items,
}

/// One progress display for one piece of work.
pub struct Progress {
    mode: Mode,
    unit: Unit,
    label: String,
    bar: Option<ProgressBar>,
    total: u64,
    /// The last tenth printed in `Lines` mode (so a line appears only when it changes).
    last_tenth: Option<u64>,
}

/// The bar's layout: sizes, rate and time left for bytes; a count and the time so far for items.
fn template(unit: Unit) -> &'static str {
    match unit {
        Unit::Bytes => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        Unit::Items => "{msg} [{bar:30}] {pos}/{len} elapsed {elapsed}",
    }
}

impl Progress {
    /// The mode for a command: quiet with `--json`, a bar on a terminal, lines otherwise.
    pub fn mode(json: bool) -> Mode {
        if json {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }

    /// Starts a display of `total` units (0: not known yet, see [`Progress::set_total`]).
    pub fn new(mode: Mode, unit: Unit, label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(template(unit)) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Progress {
            mode,
            unit,
            label,
            bar,
            total,
            last_tenth: None,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Replaces the text before the bar (e.g. the prompt being measured).
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.label = message.into();
        if let Some(bar) = &self.bar {
            bar.set_message(self.label.clone());
        }
    }

    /// Moves to `position` units done.
    pub fn set(&mut self, position: u64) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(position);
                }
            }
            Mode::Lines => {
                if let Some(line) = self.line_for(position) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// The plain line for `position`, when it starts a new tenth of the work (or the count of
    /// items changed; there are few of those).
    fn line_for(&mut self, position: u64) -> Option<String> {
        let tenth = match (self.unit, self.total) {
            (Unit::Items, _) => position,
            (Unit::Bytes, 0) => position >> 30,
            (Unit::Bytes, total) => position.min(total) * 10 / total,
        };
        if self.last_tenth == Some(tenth) {
            return None;
        }
        self.last_tenth = Some(tenth);
        Some(match self.unit {
            Unit::Items => format!("{}: {position}/{}", self.label, self.total),
            Unit::Bytes if self.total > 0 => format!(
                "{}: {}% ({}/{} MiB)",
                self.label,
                tenth * 10,
                position >> 20,
                self.total >> 20
            ),
            Unit::Bytes => format!("{}: {} MiB", self.label, position >> 20),
        })
    }

    /// Removes the bar (the final report follows on stdout).
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of work made of a few slow steps (start a worker, then its coordinator; drain,
/// restart, resume): a spinner showing the current step on a terminal, one line per step on a pipe
/// (`up: [1/3] starting beta/rpc`), nothing with `--json`.
pub struct Steps {
    mode: Mode,
    label: String,
    spinner: Option<ProgressBar>,
    done: u64,
    total: u64,
    started: std::time::Instant,
}

impl Steps {
    /// Starts a display of `total` steps (0: not known; lines then carry no count).
    pub fn new(mode: Mode, label: impl Into<String>, total: u64) -> Self {
        let label = label.into();
        let spinner = (mode == Mode::Bar).then(|| {
            let spinner = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
                spinner.set_style(style);
            }
            spinner.set_message(label.clone());
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Steps {
            mode,
            label,
            spinner,
            done: 0,
            total,
            started: std::time::Instant::now(),
        }
    }

    /// No display (library callers, tests).
    pub fn quiet() -> Self {
        Steps::new(Mode::Quiet, "", 0)
    }

    /// Step `what` begins.
    pub fn step(&mut self, what: impl std::fmt::Display) {
        self.done += 1;
        let line = self.line(&what.to_string());
        self.show(line);
    }

    /// The text for the current step: `label: [n/total] what`, or `label: what`.
    fn line(&self, what: &str) -> String {
        if self.total > 0 && self.done <= self.total {
            format!("{}: [{}/{}] {what}", self.label, self.done, self.total)
        } else {
            format!("{}: {what}", self.label)
        }
    }

    fn show(&self, line: String) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                if let Some(spinner) = &self.spinner {
                    spinner.set_message(line);
                }
            }
            Mode::Lines => eprintln!("{line}"),
        }
    }

    /// The work is done: a last line (`up: done in 3.2 s`) on a pipe; the spinner goes away on a
    /// terminal (the command's report follows on stdout).
    pub fn finish(self, what: impl std::fmt::Display) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
        if self.mode == Mode::Lines {
            eprintln!(
                "{}: {what} in {:.1} s",
                self.label,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_count_when_the_total_is_known() {
        let mut s = Steps::new(Mode::Quiet, "up", 2);
        s.done = 1;
        assert_eq!(s.line("starting beta/rpc"), "up: [1/2] starting beta/rpc");
        s.done = 3;
        assert_eq!(s.line("one more"), "up: one more");
        let unknown = Steps::new(Mode::Quiet, "swap", 0);
        assert_eq!(unknown.line("draining"), "swap: draining");
        assert!(Steps::quiet().spinner.is_none());
    }

    #[test]
    fn plain_lines_appear_once_per_tenth_of_the_bytes() {
        let mut p = Progress::new(Mode::Lines, Unit::Bytes, "m.gguf", 1000 << 20);
        let lines: Vec<String> = (0..=100u64)
            .filter_map(|i| p.line_for(i * (10 << 20)))
            .collect();
        assert_eq!(lines.len(), 11, "{lines:?}");
        assert_eq!(lines[0], "m.gguf: 0% (0/1000 MiB)");
        assert_eq!(lines[10], "m.gguf: 100% (1000/1000 MiB)");
    }

    #[test]
    fn the_bar_templates_are_valid() {
        for unit in [Unit::Bytes, Unit::Items] {
            assert!(ProgressStyle::with_template(template(unit)).is_ok());
        }
    }

    #[test]
    fn plain_lines_count_items_and_json_shows_nothing() {
        let mut p = Progress::new(Mode::Lines, Unit::Items, "bench", 3);
        assert_eq!(p.line_for(1).as_deref(), Some("bench: 1/3"));
        assert_eq!(p.line_for(1), None);
        assert_eq!(Progress::mode(true), Mode::Quiet);
        let quiet = Progress::new(Mode::Quiet, Unit::Items, "x", 3);
        assert!(quiet.bar.is_none());
    }
}
