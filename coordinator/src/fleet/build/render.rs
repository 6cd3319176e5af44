//! What `tightwad build` shows: progress bars while hosts build, the per-host summary after.

use super::{HostResult, Observer};
use crate::fleet::HostEntry;
use tightwad_protocol::messages::{BuildIdentity, BuildProgress, BuildStage};

fn stage_label(stage: BuildStage) -> &'static str {
    match stage {
        BuildStage::Upload => "upload",
        BuildStage::Unpack => "unpack",
        BuildStage::Configure => "cmake",
        BuildStage::Compile => "compile",
        BuildStage::SmokeTest => "smoke test",
        BuildStage::Switch => "switch",
    }
}

/// Progress bars, one per host (only drawn on a terminal); stage changes as plain lines
/// otherwise, so logs of a run without a terminal still show where each host is.
pub(super) struct Bars {
    pub(super) multi: indicatif::MultiProgress,
    pub(super) bars: Vec<(String, indicatif::ProgressBar)>,
    last_stage: std::sync::Mutex<std::collections::HashMap<String, BuildStage>>,
    terminal: bool,
}

impl Bars {
    pub(super) fn new(hosts: &[HostEntry], hidden: bool) -> Self {
        let terminal = !hidden && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = if terminal {
            indicatif::MultiProgress::new()
        } else {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12.bold} {bar:30.cyan/blue} {pos:>5}/{len:5} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let bars = hosts
            .iter()
            .map(|h| {
                let bar = multi.add(indicatif::ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(h.name.clone());
                bar.set_message("connecting");
                (h.name.clone(), bar)
            })
            .collect();
        Bars {
            multi,
            bars,
            last_stage: Default::default(),
            terminal,
        }
    }
}

impl Observer for Bars {
    fn progress(&self, host: &str, p: &BuildProgress) {
        if let Some((_, bar)) = self.bars.iter().find(|(name, _)| name == host) {
            let (done, total) = match p.stage {
                // Bytes are shown in MiB.
                BuildStage::Upload => (p.done >> 20, (p.total >> 20).max(1)),
                _ => (p.done, p.total.max(1)),
            };
            bar.set_length(total);
            bar.set_position(done.min(total));
            bar.set_message(format!("{}: {}", stage_label(p.stage), p.message));
        }
        let changed = self
            .last_stage
            .lock()
            .map(|mut last| last.insert(host.to_string(), p.stage) != Some(p.stage))
            .unwrap_or(false);
        if !self.terminal
            && (changed || p.stage != BuildStage::Compile && p.stage != BuildStage::Upload)
        {
            eprintln!("[{host}] {}: {}", stage_label(p.stage), p.message);
        }
    }

    /// A line of its own above the bars (or in the log), leaving the host's bar where it is.
    fn notice(&self, host: &str, stage: BuildStage, message: &str) {
        let line = format!("[{host}] {}: {message}", stage_label(stage));
        if !self.terminal || self.multi.println(&line).is_err() {
            eprintln!("{line}");
        }
    }
}

/// The summary for people.
pub(super) fn render(results: &[HostResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.ok {
            out.push_str(&format!(
                "✓ {}: {}{} in {:.0}s; {}; switched: {}{}\n",
                r.host,
                r.build.as_deref().unwrap_or("?"),
                if r.reused { " (already built)" } else { "" },
                r.seconds,
                r.smoke_test.as_deref().unwrap_or(""),
                if r.switched.is_empty() {
                    "nothing running".to_string()
                } else {
                    r.switched.join(", ")
                },
                r.previous
                    .as_ref()
                    .map(|p| format!("; previous {p} kept for --rollback"))
                    .unwrap_or_default()
            ));
        } else {
            out.push_str(&format!(
                "✗ {}: {}\n    what to do: {}\n",
                r.host,
                r.error.as_deref().unwrap_or("failed"),
                r.advice.as_deref().unwrap_or("")
            ));
        }
    }
    let builds: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.identity.as_ref())
        .map(identity_key)
        .collect();
    let failed = results.iter().filter(|r| !r.ok).count();
    match (builds.len(), failed) {
        (1, 0) => out.push_str(&format!(
            "all {} host(s) run one llama.cpp build: {}\n",
            results.len(),
            builds.iter().next().map(String::as_str).unwrap_or("")
        )),
        (_, 0) => out.push_str(&format!(
            "the hosts run different llama.cpp builds: {}\n",
            builds.into_iter().collect::<Vec<_>>().join(", ")
        )),
        _ => out.push_str(&format!(
            "{failed} of {} host(s) failed (their current builds keep serving); fix them and run the same command with --host {}\n",
            results.len(),
            results.iter().filter(|r| !r.ok).map(|r| r.host.as_str()).collect::<Vec<_>>().join(",")
        )),
    }
    out
}

/// Version and commit, without the backend: hosts with different GPUs run "one build" when
/// these agree.
fn identity_key(identity: &BuildIdentity) -> String {
    let b = &identity.build;
    format!(
        "{}b{}-{}",
        b.version
            .as_ref()
            .map(|v| format!("{v} "))
            .unwrap_or_default(),
        b.build_number
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into()),
        b.commit.as_deref().unwrap_or("?")
    )
}
