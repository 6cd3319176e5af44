//! Draining a pairing for a model swap (`tightwad swap`): new requests wait, in-flight ones
//! finish, then the caller restarts the target with another model and resumes the pairing.
//!
//! Each pairing has a read–write lock. Every request holds a read guard for its whole life
//! (streams included: it travels in the request's permit). A drain takes the write guard:
//! tokio's lock is fair, so once a drain waits, new requests queue behind it instead of
//! starving it; it is granted when the last in-flight request ends. The guard is then kept
//! here until `resume` (or until its hold time runs out, so a swap client that died never
//! leaves a pairing closed for good). Requests that waited longer than [`MAX_WAIT`] get a 503
//! that says why; the others go on as soon as the pairing resumes, against the new model.
//!
//! Routes (control routes: with API keys configured a valid key; without, loopback clients only
//! unless `remote_control = true`; `hold_s` and `timeout_s` at most [`MAX_HOLD`]):
//! `POST /v1/tightwad/pairings/{name}/drain` `{"timeout_s": 120, "hold_s": 600}` → 200 once
//! nothing is in flight (504 if that took longer than `timeout_s`; requests flow again then);
//! `POST /v1/tightwad/pairings/{name}/resume` → 200, and the pairing re-probes its servers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::{info, warn};

/// Longest a request waits for a drained pairing before it is refused with 503.
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// Longest a drain stays in force without a `resume` when the caller names no `hold_s`.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(600);
/// The largest `hold_s` (and `timeout_s`) a drain accepts: an hour (a bigger value is 400).
pub const MAX_HOLD: Duration = Duration::from_secs(3600);

/// The drain state of every pairing, by pairing name (a reload adds and removes names).
#[derive(Default)]
pub struct Drains {
    by_name: std::sync::RwLock<HashMap<String, Arc<Drain>>>,
}

struct Drain {
    lock: Arc<RwLock<()>>,
    /// The write guard while drained, with a number that tells an expiry which drain it ends.
    held: std::sync::Mutex<Option<(u64, OwnedRwLockWriteGuard<()>)>>,
    generation: std::sync::atomic::AtomicU64,
}

/// Why a drain did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("no pairing named {0:?}")]
    Unknown(String),
    #[error("requests to {name} were still in flight after {waited_s} s; nothing was drained")]
    Timeout { name: String, waited_s: u64 },
}

impl Drains {
    pub fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let drains = Drains::default();
        drains.sync(names);
        drains
    }

    /// Follow a reload: a drain state for each new name, and none for a name that is gone. A
    /// drain held on a pairing that is gone ends, so requests that waited on it go on (they were
    /// admitted to it before the reload and finish on it, like every request in flight).
    pub fn sync<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let names: Vec<&str> = names.collect();
        let mut by_name = self
            .by_name
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        by_name.retain(|name, d| {
            let keep = names.contains(&name.as_str());
            if !keep {
                d.held
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
            }
            keep
        });
        for name in names {
            by_name.entry(name.to_string()).or_insert_with(|| {
                Arc::new(Drain {
                    lock: Arc::new(RwLock::new(())),
                    held: std::sync::Mutex::new(None),
                    generation: Default::default(),
                })
            });
        }
    }

    fn get(&self, pairing: &str) -> Option<Arc<Drain>> {
        self.by_name
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(pairing)
            .cloned()
    }

    /// A request's admission to `pairing`: immediate unless the pairing is drained, then as soon
    /// as it resumes; `None` when it stayed drained past [`MAX_WAIT`].
    pub async fn admit(&self, pairing: &str) -> Option<Option<OwnedRwLockReadGuard<()>>> {
        let Some(d) = self.get(pairing) else {
            return Some(None);
        };
        if let Ok(g) = d.lock.clone().try_read_owned() {
            return Some(Some(g));
        }
        info!(pairing, "pairing drained for a swap: request waits");
        tokio::time::timeout(MAX_WAIT, d.lock.clone().read_owned())
            .await
            .ok()
            .map(Some)
    }

    /// Wait until nothing is in flight for `pairing` and keep new requests waiting until
    /// [`Drains::resume`] or `hold` has passed. Returns how long the wait took.
    pub async fn drain(
        &self,
        pairing: &str,
        timeout: Duration,
        hold: Duration,
    ) -> Result<Duration, DrainError> {
        let d = self
            .get(pairing)
            .ok_or_else(|| DrainError::Unknown(pairing.to_string()))?;
        if d.held.lock().map(|h| h.is_some()).unwrap_or(false) {
            return Ok(Duration::ZERO);
        }
        let started = Instant::now();
        let guard = tokio::time::timeout(timeout, d.lock.clone().write_owned())
            .await
            .map_err(|_| DrainError::Timeout {
                name: pairing.to_string(),
                waited_s: timeout.as_secs(),
            })?;
        let generation = d
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Ok(mut held) = d.held.lock() {
            *held = Some((generation, guard));
        }
        info!(
            pairing,
            waited_ms = started.elapsed().as_millis() as u64,
            "pairing drained"
        );
        let name = pairing.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let mut held = d
                .held
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if held.as_ref().is_some_and(|(g, _)| *g == generation) {
                *held = None;
                warn!(pairing = %name, hold_s = hold.as_secs(), "drain expired without a resume: serving again");
            }
        });
        Ok(started.elapsed())
    }

    /// Let requests to `pairing` through again. `Ok(false)`: it was not drained.
    pub fn resume(&self, pairing: &str) -> Result<bool, DrainError> {
        let d = self
            .get(pairing)
            .ok_or_else(|| DrainError::Unknown(pairing.to_string()))?;
        let was = d
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .is_some();
        if was {
            info!(pairing, "pairing resumed");
        }
        Ok(was)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_waits_for_in_flight_requests_and_holds_new_ones_until_resume() {
        let drains = Arc::new(Drains::new(["p"].into_iter()));
        let in_flight = drains.admit("p").await.expect("admitted").expect("guard");
        let d2 = drains.clone();
        let drain =
            tokio::spawn(async move { d2.drain("p", Duration::from_secs(5), DEFAULT_HOLD).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !drain.is_finished(),
            "drained while a request was in flight"
        );
        drop(in_flight);
        drain.await.expect("task").expect("drained");
        let d3 = drains.clone();
        let waiting = tokio::spawn(async move { d3.admit("p").await.map(|g| g.is_some()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a new request went through a drain");
        assert!(drains.resume("p").expect("known"));
        assert_eq!(waiting.await.expect("task"), Some(true));
        assert!(matches!(
            drains
                .drain("nope", Duration::from_secs(1), DEFAULT_HOLD)
                .await,
            Err(DrainError::Unknown(_))
        ));
    }

    #[tokio::test]
    async fn a_drain_that_cannot_finish_in_time_leaves_requests_flowing() {
        let drains = Drains::new(["p"].into_iter());
        let _busy = drains.admit("p").await.expect("admitted");
        let e = drains
            .drain("p", Duration::from_millis(100), DEFAULT_HOLD)
            .await
            .unwrap_err();
        assert!(matches!(e, DrainError::Timeout { .. }), "{e}");
        assert!(drains.admit("p").await.expect("admitted").is_some());
    }

    #[tokio::test]
    async fn a_reload_adds_and_drops_drain_states_and_ends_a_drain_on_a_dropped_pairing() {
        let drains = Arc::new(Drains::new(["p"].into_iter()));
        drains
            .drain("p", Duration::from_secs(5), DEFAULT_HOLD)
            .await
            .expect("drained");
        let d2 = drains.clone();
        let waiting = tokio::spawn(async move { d2.admit("p").await.map(|g| g.is_some()) });
        drains.sync(["q"].into_iter());
        // Whether it waited already or comes after the reload, the request is not left waiting
        // for a resume nobody can send any more.
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting request went on")
            .expect("task");
        assert!(admitted.is_some());
        assert!(matches!(drains.resume("p"), Err(DrainError::Unknown(_))));
        drains
            .drain("q", Duration::from_secs(5), DEFAULT_HOLD)
            .await
            .expect("the added pairing can be drained");
        assert!(drains.resume("q").expect("known"));
    }
}
