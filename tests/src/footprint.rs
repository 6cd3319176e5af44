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

    /// Wait (up to `limit`) until no TCP connection with `port` at either end is held open by a
    /// process any more (listeners aside): the test's own clients of a proxy listening there are
    /// gone, on the client's side and on the proxy's. `false` if some remain at the deadline.
    pub async fn connections_closed(port: u16, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if open_connections(port) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// TCP connections of this network namespace with `port` at either end that a process still holds
/// (a socket inode; closed ones waiting out TIME_WAIT have none), listening sockets excluded.
fn open_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_of = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl, local, remote, state, queues, timer, retransmits, uid, timeout, inode.
            f.len() >= 10
                && f[3] != "0A"
                && f[9] != "0"
                && (port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port))
        })
        .count()
}
