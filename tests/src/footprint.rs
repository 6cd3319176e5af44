//! The proxy's footprint (open file descriptors, live tokio tasks) before and after a fault, to show
//! a fault leaves nothing behind; and a process's resident memory.

use std::time::{Duration, Instant};

/// What the proxy holds: open file descriptors of this process (sockets included) and live
/// tasks of the tokio runtime it runs on. The in-process proxy shares both with the test, so
/// take the baseline with the test's own clients dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub open_fds: usize,
    pub alive_tasks: usize,
}

impl Footprint {
    pub fn now() -> Footprint {
        Footprint {
            open_fds: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0),
            alive_tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
        }
    }

    /// Wait (up to `settle`) until the footprint is back to `baseline` (plus `slack` descriptors:
    /// a pooled keep-alive connection the proxy re-opened is not a leak), and return the last
    /// measurement either way; the caller asserts.
    pub async fn settle_to(baseline: Footprint, slack: usize, settle: Duration) -> Footprint {
        let deadline = Instant::now() + settle;
        loop {
            let now = Footprint::now();
            let back = now.open_fds <= baseline.open_fds + slack
                && now.alive_tasks <= baseline.alive_tasks;
            if back || Instant::now() >= deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
