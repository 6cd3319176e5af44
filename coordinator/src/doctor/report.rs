//! One line per check: a status mark, what was checked, what was found, and how to fix it.
//! The JSON form is the same list (schema in `README.md` next to this file).

use serde::Serialize;
use std::fmt::Write;

/// Bumped when a field changes meaning or disappears (new fields and check ids do not bump it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// Works, but not as well as it could (or a prediction says it will not pay).
    Warn,
    /// Will not work as configured: the exit code is non-zero.
    Fail,
    /// Could not be checked (its prerequisite failed: an unreachable host, a server not running).
    Skip,
}

impl Status {
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
            Status::Skip => "-",
        }
    }
}

/// The family a check belongs to; stable identifiers for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Host,
    Build,
    Model,
    Flags,
    Memory,
    Vocabulary,
    Slots,
    Network,
    Payoff,
    /// The coordinator's layout against what the agents run (URLs, ports, process kinds).
    Layout,
}

impl Category {
    pub fn label(self) -> &'static str {
        match self {
            Category::Host => "host",
            Category::Build => "build",
            Category::Model => "model",
            Category::Flags => "flags",
            Category::Memory => "memory",
            Category::Vocabulary => "vocabulary",
            Category::Slots => "slots",
            Category::Network => "network",
            Category::Payoff => "payoff",
            Category::Layout => "layout",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub category: Category,
    /// What was checked: `gpu-box`, `gpu-box/target`, `pairing llama-70b`, `pool big`, a URL.
    pub subject: String,
    pub status: Status,
    pub message: String,
    /// How to fix it (absent on success).
    pub hint: Option<String>,
    /// Numbers behind the message, per category (see README.md); `null` when none.
    pub details: serde_json::Value,
}

impl Check {
    pub fn new(
        category: Category,
        subject: impl Into<String>,
        status: Status,
        message: impl Into<String>,
    ) -> Self {
        Check {
            category,
            subject: subject.into(),
            status,
            message: message.into(),
            hint: None,
            details: serde_json::Value::Null,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    /// `false` when any check failed (the exit code is then 1).
    pub ok: bool,
    pub summary: Summary,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        let summary = Summary {
            pass: count(Status::Pass),
            warn: count(Status::Warn),
            fail: count(Status::Fail),
            skip: count(Status::Skip),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            ok: summary.fail == 0,
            summary,
            checks,
        }
    }

    /// The lines for people: `✓ build  gpu-box  llama.cpp b8111 ...` and `    fix: ...`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let subject_width = self
            .checks
            .iter()
            .map(|c| c.subject.chars().count())
            .max()
            .unwrap_or(0)
            .min(40);
        for check in &self.checks {
            let _ = writeln!(
                out,
                "{} {:<10} {:<width$}  {}",
                check.status.mark(),
                check.category.label(),
                check.subject,
                check.message,
                width = subject_width
            );
            if let Some(hint) = &check.hint {
                let _ = writeln!(out, "    fix: {hint}");
            }
        }
        let s = &self.summary;
        let _ = writeln!(
            out,
            "\n{} passed, {} warnings, {} failed, {} skipped",
            s.pass, s.warn, s.fail, s.skip
        );
        out
    }
}

pub fn gib(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib >= 1.0 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON field names are a documented interface (README.md): keep them.
    #[test]
    fn json_shape_is_stable() {
        let report = Report::new(vec![
            Check::new(Category::Model, "a/t", Status::Fail, "missing").hint("copy it"),
            Check::new(Category::Host, "a", Status::Pass, "ok"),
        ]);
        let v = serde_json::to_value(&report).expect("json");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["ok"], false);
        assert_eq!(v["summary"]["fail"], 1);
        assert_eq!(v["summary"]["pass"], 1);
        let check = &v["checks"][0];
        for key in [
            "category", "subject", "status", "message", "hint", "details",
        ] {
            assert!(check.get(key).is_some(), "{key} missing: {check}");
        }
        assert_eq!(check["category"], "model");
        assert_eq!(check["status"], "fail");
        assert_eq!(v["checks"][1]["hint"], serde_json::Value::Null);
        let text = report.render();
        assert!(text.contains("✗ model"), "{text}");
        assert!(text.contains("    fix: copy it"), "{text}");
        assert!(
            text.contains("1 passed, 0 warnings, 1 failed, 0 skipped"),
            "{text}"
        );
    }
}
