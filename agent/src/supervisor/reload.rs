//! Re-reading agent.toml's `[[process]]` entries on SIGHUP: running servers keep running unless
//! their own entry changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{managed_from, stop_managed, Managed, Supervisor};
use crate::config::AgentConfig;

/// What a reload did to each configured process, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SupervisorReload {
    /// Same entry: left alone (a running one keeps running, same PID).
    pub unchanged: Vec<String>,
    /// Entry changed: stopped if it ran, and started again with its new entry.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    /// No longer configured: stopped and forgotten.
    pub removed: Vec<String>,
    /// Starts that failed after the reload (name, reason).
    pub failed_starts: Vec<(String, String)>,
}

impl Supervisor {
    /// Take a re-read config's `[[process]]` entries: a process whose entry (and the agent-wide
    /// settings it uses: binary, timeouts, reclaim) is unchanged is not touched, so a running
    /// server keeps running; a changed one is stopped and, if it ran (or autostarts), started
    /// with its new entry; a removed one is stopped; a new one starts if it autostarts.
    pub async fn reload(&self, config: &AgentConfig) -> SupervisorReload {
        let old = self.table();
        let mut report = SupervisorReload::default();
        let mut next: BTreeMap<String, Arc<Managed>> = BTreeMap::new();
        let mut retire = Vec::new();
        let mut start = Vec::new();
        for p in &config.processes {
            let fresh = managed_from(config, p, &self.log_dir);
            match old.get(&p.name) {
                Some(running) if running.same_settings(&fresh) => {
                    report.unchanged.push(p.name.clone());
                    next.insert(p.name.clone(), running.clone());
                    continue;
                }
                Some(running) => {
                    report.changed.push(p.name.clone());
                    if *running.desired.borrow() || p.autostart {
                        start.push(p.name.clone());
                    }
                    retire.push(running.clone());
                }
                None => {
                    report.added.push(p.name.clone());
                    if p.autostart {
                        start.push(p.name.clone());
                    }
                }
            }
            next.insert(p.name.clone(), Arc::new(fresh));
        }
        for (name, running) in &old {
            if !next.contains_key(name) {
                report.removed.push(name.clone());
                retire.push(running.clone());
            }
        }
        for managed in retire {
            stop_managed(&managed).await;
        }
        match self.processes.write() {
            Ok(mut t) => *t = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        for name in start {
            if let Err(e) = self.start(&name, None).await {
                report.failed_starts.push((name, e.to_string()));
            }
        }
        report
    }
}

impl Managed {
    /// Whether `other` (made from a re-read config) would run this process the same way.
    fn same_settings(&self, other: &Managed) -> bool {
        self.kind == other.kind
            && self.configured_binary == other.configured_binary
            && self.configured_args == other.configured_args
            && self.port_override == other.port_override
            && self.health_host == other.health_host
            && self.ready_timeout == other.ready_timeout
            && self.restart_on_crash == other.restart_on_crash
            && self.grace == other.grace
            && self.reclaim == other.reclaim
    }
}
