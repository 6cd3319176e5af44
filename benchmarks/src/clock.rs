//! Sleeping until an instant with sub-millisecond precision.
//!
//! Tokio's timer has a 1 ms resolution and rounds up, which would turn a 0.15 ms one-way delay
//! into 1 ms and make a 2 ms-per-token draft 50% slower than configured. So the bulk of a wait is
//! a tokio sleep and the last stretch runs on the blocking pool, which keeps the runtime's worker
//! threads free: a thread sleep, its timer slack set to 1 ns (Linux lets a sleep overrun by its
//! slack, 50 µs by default), then a spin over the last [`SPIN`], because even so a sleeping
//! thread woke tens of microseconds late. Measured on a 2-core VM by `benchmarks/gpu/relay_rtt.py`:
//! a "0.3 ms" relay added 0.57 ms to a ping with the sleep alone, 0.41 ms with the spin (and a
//! single-threaded relay, `lan-relay`); the rest is the relay's own hops.

use std::time::{Duration, Instant};

/// Below this much remaining time, the wait is finished on a blocking thread.
const FINE_GRAIN: Duration = Duration::from_micros(1500);

/// The last stretch of a wait, spun rather than slept (see [`wait_on_this_thread`]).
const SPIN: Duration = Duration::from_micros(120);

/// Wait until `deadline` (returns at once when it has passed).
pub async fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline <= now {
        return;
    }
    if deadline - now > FINE_GRAIN {
        tokio::time::sleep_until((deadline - FINE_GRAIN).into()).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        return;
    }
    // A failed join only means the runtime is shutting down; the wait is over either way.
    let _ = tokio::task::spawn_blocking(move || {
        precise_timers();
        wait_on_this_thread(deadline)
    })
    .await;
}

/// Sleep until `SPIN` before `deadline`, then spin to it (see the module's doc). The spin costs
/// at most `SPIN` of one core per wait.
fn wait_on_this_thread(deadline: Instant) {
    // From the deadline, not from the wait's start: this thread began after a hand-off.
    let rest = deadline.saturating_duration_since(Instant::now());
    if rest > SPIN {
        std::thread::sleep(rest - SPIN);
    }
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// This thread's sleeps end within microseconds of their deadline (Linux: the timer slack).
fn precise_timers() {
    #[cfg(target_os = "linux")]
    {
        use std::cell::Cell;
        thread_local!(static SET: Cell<bool> = const { Cell::new(false) });
        SET.with(|set| {
            if !set.get() {
                // Refused only by an old kernel: the sleep is then as precise as before.
                let _ = nix::sys::prctl::set_timerslack(1);
                set.set(true);
            }
        });
    }
}

/// Wait for `duration` from now.
pub async fn sleep(duration: Duration) {
    sleep_until(Instant::now() + duration).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_returns_early() {
        for micros in [0u64, 200, 900, 2500] {
            let wanted = Duration::from_micros(micros);
            let started = Instant::now();
            sleep(wanted).await;
            assert!(started.elapsed() >= wanted, "{micros} µs");
        }
    }
}
