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

/// What [`Progress`] and [`Steps`] share: the mode, the text before the bar, and in `Bar` mode the
/// live `indicatif` bar or spinner.
struct Display {
    mode: Mode,
    label: String,
    live: Option<ProgressBar>,
}

impl Display {
    /// In `Bar` mode, `live()` (a bar or a spinner) drawn with `style`, showing `label`, redrawn
    /// every `tick`; nothing is drawn in the other modes.
    fn new(
        mode: Mode,
        label: String,
        live: impl FnOnce() -> ProgressBar,
        style: Result<ProgressStyle, indicatif::style::TemplateError>,
        tick: Duration,
    ) -> Display {
        let live = (mode == Mode::Bar).then(|| {
            let bar = live();
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.set_message(label.clone());
            bar.enable_steady_tick(tick);
            bar
        });
        Display { mode, label, live }
    }

    /// Shows progress: `update` on the live display, `line` on a pipe (none: nothing new to
    /// print), nothing when quiet.
    fn show(&self, update: impl FnOnce(&ProgressBar), line: Option<String>) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Bar => {
                if let Some(live) = &self.live {
                    update(live);
                }
            }
            Mode::Lines => {
                if let Some(line) = line {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Removes the live display (the command's report follows on stdout).
    fn clear(&self) {
        if let Some(live) = &self.live {
            live.finish_and_clear();
        }
    }
}

/// One progress display for one piece of work.
pub struct Progress {
    display: Display,
    unit: Unit,
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
        let display = Display::new(
            mode,
            label.into(),
            || ProgressBar::new(total),
            ProgressStyle::with_template(template(unit)).map(|s| s.progress_chars("=> ")),
            Duration::from_millis(250),
        );
        Progress {
            display,
            unit,
            total,
            last_tenth: None,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.display.live {
            bar.set_length(total);
        }
    }

    /// Replaces the text before the bar (e.g. the prompt being measured).
    pub fn set_message(&mut self, message: impl Into<String>) {
        self.display.label = message.into();
        if let Some(bar) = &self.display.live {
            bar.set_message(self.display.label.clone());
        }
    }

    /// Moves to `position` units done.
    pub fn set(&mut self, position: u64) {
        let line = match self.display.mode {
            Mode::Lines => self.line_for(position),
            _ => None,
        };
        self.display.show(|bar| bar.set_position(position), line);
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
            Unit::Items => format!("{}: {position}/{}", self.display.label, self.total),
            Unit::Bytes if self.total > 0 => format!(
                "{}: {}% ({}/{} MiB)",
                self.display.label,
                tenth * 10,
                position >> 20,
                self.total >> 20
            ),
            Unit::Bytes => format!("{}: {} MiB", self.display.label, position >> 20),
        })
    }

    /// Removes the bar (the final report follows on stdout).
    pub fn finish(self) {
        self.display.clear();
    }
}

/// Progress of work made of a few slow steps (start a worker, then its coordinator; drain,
/// restart, resume): a spinner showing the current step on a terminal, one line per step on a pipe
/// (`up: [1/3] starting beta/rpc`), nothing with `--json`.
pub struct Steps {
    display: Display,
    done: u64,
    total: u64,
    started: std::time::Instant,
}

impl Steps {
    /// Starts a display of `total` steps (0: not known; lines then carry no count).
    pub fn new(mode: Mode, label: impl Into<String>, total: u64) -> Self {
        let display = Display::new(
            mode,
            label.into(),
            ProgressBar::new_spinner,
            ProgressStyle::with_template("{spinner} {msg} {elapsed}"),
            Duration::from_millis(120),
        );
        Steps {
            display,
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
        self.display.show(
            |spinner| spinner.set_message(line.clone()),
            Some(line.clone()),
        );
    }

    /// The text for the current step: `label: [n/total] what`, or `label: what`.
    fn line(&self, what: &str) -> String {
        if self.total > 0 && self.done <= self.total {
            format!(
                "{}: [{}/{}] {what}",
                self.display.label, self.done, self.total
            )
        } else {
            format!("{}: {what}", self.display.label)
        }
    }

    /// The work is done: a last line (`up: done in 3.2 s`) on a pipe; the spinner goes away on a
    /// terminal (the command's report follows on stdout).
    pub fn finish(self, what: impl std::fmt::Display) {
        self.display.clear();
        if self.display.mode == Mode::Lines {
            eprintln!(
                "{}: {what} in {:.1} s",
                self.display.label,
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
        assert!(Steps::quiet().display.live.is_none());
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
        assert!(quiet.display.live.is_none());
    }
}
