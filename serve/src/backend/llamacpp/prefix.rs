//! Rounds that send a slot only what it does not hold yet (`cached_prefix`, bundled patch 0006).
//!
//! Every round sends the whole context to both servers: about 7 bytes a token as JSON, 40 KB a
//! round at a 3000-token context, parsed by the server's HTTP thread before it can start (0.5 ms a
//! request more than at a short context on the CPU machine, 3 ms a round on a 100 Mbit/s link).
//! The server already holds all but the last few of those tokens in the slot that served the
//! previous round. A patched server takes `"cached_prefix": {"n_tokens": n, "hash": h}` with
//! `id_slot`: the prompt is that slot's first `n` tokens followed by the request's `prompt`, and
//! `h` (FNV-1a 64 of those tokens) must match what the slot holds, else it answers 404 and holds
//! on to nothing it did not have.
//!
//! What the proxy knows: after a request with prompt P served by slot s (the reply's `id_slot`),
//! s holds P followed by some generated tokens — until anyone else's request takes s, a restart
//! empties it, or a context shift rewrites it. [`SlotMemory`] keeps per slot the last prompt this
//! proxy sent there. A new prompt names the slot whose remembered prompt shares the longest prefix
//! with it (at least [`MIN_PREFIX`] tokens) and sends only the rest; any change the proxy did not
//! see shows as a hash mismatch (404), and the request goes again whole. A reply whose
//! `tokens_evaluated` is not the whole prompt's length means the server did not prepend the
//! prefix (a stock build ignores the field): that reply is thrown away, the server is no longer
//! sent prefixes, and the request goes again whole. So the output never depends on the memory
//! being right; a wrong memory costs one request.
//!
//! A slot named here is marked busy until its reply is read ([`Lease`]): two requests of this
//! proxy never name the same slot at once. A slot busy with anything else (another client, a
//! stream of this proxy's, which it cannot see) answers 404 at once, and the request goes whole to
//! whichever slot is free: naming never makes a round wait behind someone else's generation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::LlamaServer;
use crate::backend::types::{Completion, TokenId};
use crate::backend::BackendError;

/// Shorter shared prefixes are sent whole: the bytes saved would not be worth a request that a
/// stale memory could make the proxy send twice.
pub const MIN_PREFIX: usize = 32;

/// FNV-1a 64 of token ids, each as 4 little-endian bytes: the `hash` of a `cached_prefix` (the
/// bundled patch computes the same over the slot's tokens).
pub fn fnv1a(tokens: &[TokenId]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// What this proxy last left in each slot of one server, and what naming it has saved.
#[derive(Debug, Default)]
pub struct SlotMemory {
    state: Mutex<State>,
    named: AtomicU64,
    misses: AtomicU64,
    tokens_not_sent: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    /// The server takes `cached_prefix` (its `/props` says so, and no reply contradicted it).
    enabled: bool,
    slots: Vec<Slot>,
}

#[derive(Debug, Default, Clone)]
struct Slot {
    /// The last prompt this proxy sent to the slot (a prefix of what the slot holds, unless
    /// something the proxy did not see changed it).
    held: Vec<TokenId>,
    /// A request of this proxy names the slot now.
    busy: bool,
}

/// The counters the stats show per server.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrefixStats {
    /// Requests that named a slot's cached prefix instead of sending it.
    pub named: u64,
    /// Of those, how many the server answered "not held" or "busy" (sent again whole).
    pub misses: u64,
    /// Prompt tokens not sent thanks to the named prefixes.
    pub tokens_not_sent: u64,
}

/// A slot named by one request; dropped unsettled (the request failed or was abandoned), the slot's
/// memory is forgotten: what the server did with it is unknown.
pub struct Lease<'a> {
    memory: &'a SlotMemory,
    pub slot: usize,
    /// How many of the prompt's first tokens the slot is named for.
    pub n: usize,
    settled: bool,
}

impl Lease<'_> {
    /// The request succeeded with `prompt`: the slot now holds it.
    fn settle(mut self, prompt: &[TokenId]) {
        let mut st = self.memory.lock();
        if let Some(s) = st.slots.get_mut(self.slot) {
            s.held.clear();
            s.held.extend_from_slice(prompt);
            s.busy = false;
        }
        self.settled = true;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let mut st = self.memory.lock();
            if let Some(s) = st.slots.get_mut(self.slot) {
                s.held.clear();
                s.busy = false;
            }
        }
    }
}

impl SlotMemory {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after every statement: a panic elsewhere while it
        // was held leaves nothing half-done to protect.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the server's `/props` said: whether it takes `cached_prefix`, and how many slots it
    /// has. Called at every probe; a change of either forgets everything remembered.
    pub fn configure(&self, enabled: bool, n_slots: usize) {
        let mut st = self.lock();
        if st.enabled != enabled || st.slots.len() != n_slots {
            st.enabled = enabled;
            st.slots = vec![Slot::default(); if enabled { n_slots } else { 0 }];
        }
    }

    fn disable(&self) {
        let mut st = self.lock();
        st.enabled = false;
        st.slots.clear();
    }

    /// The idle slot to name for `prompt` and how many of its tokens it holds, if any slot holds
    /// at least [`MIN_PREFIX`] of them; marks it busy until the lease is settled or dropped.
    pub fn lease(&self, prompt: &[TokenId]) -> Option<Lease<'_>> {
        let mut st = self.lock();
        if !st.enabled {
            return None;
        }
        let (slot, n) = st
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .map(|(i, s)| (i, common_prefix(&s.held, prompt)))
            .max_by_key(|&(_, n)| n)?;
        // At least one token goes in the request itself: the server evaluates it for the
        // completion's first logits.
        let n = n.min(prompt.len().saturating_sub(1));
        if n < MIN_PREFIX {
            return None;
        }
        st.slots[slot].busy = true;
        Some(Lease {
            memory: self,
            slot,
            n,
            settled: false,
        })
    }

    /// A request sent whole was served by slot `slot`: it now holds `prompt` (unless a request of
    /// this proxy names that slot right now; its own reply will say).
    pub fn remember(&self, slot: usize, prompt: &[TokenId]) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(slot) {
            if !s.busy {
                s.held.clear();
                s.held.extend_from_slice(prompt);
            }
        }
    }

    pub fn stats(&self) -> Option<PrefixStats> {
        self.lock().enabled.then(|| PrefixStats {
            named: self.named.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            tokens_not_sent: self.tokens_not_sent.load(Ordering::Relaxed),
        })
    }
}

fn common_prefix(a: &[TokenId], b: &[TokenId]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl LlamaServer {
    /// POST a `/completion` whose prompt is `prompt` (`body` holds everything else): naming the
    /// slot that holds most of it where [`SlotMemory`] knows one, whole otherwise.
    pub(super) async fn complete_body(
        &self,
        prompt: &[TokenId],
        mut body: Map<String, Value>,
    ) -> Result<Completion, BackendError> {
        let memory: &SlotMemory = &self.prefix;
        if let Some(lease) = memory.lease(prompt) {
            let mut named = body.clone();
            named.insert("prompt".into(), json!(&prompt[lease.n..]));
            named.insert("id_slot".into(), json!(lease.slot));
            named.insert(
                "cached_prefix".into(),
                json!({"n_tokens": lease.n, "hash": format!("{:016x}", fnv1a(&prompt[..lease.n]))}),
            );
            memory.named.fetch_add(1, Ordering::Relaxed);
            match self
                .ep
                .post_json::<Completion>("/completion", &Value::Object(named))
                .await
            {
                Ok(c) if c.tokens_evaluated == Some(prompt.len() as u64) => {
                    memory
                        .tokens_not_sent
                        .fetch_add(lease.n as u64, Ordering::Relaxed);
                    lease.settle(prompt);
                    return Ok(c);
                }
                Ok(c) => {
                    // Its answer is for another prompt: the server did not prepend the prefix.
                    warn!(
                        server = %self.base_url(),
                        evaluated = ?c.tokens_evaluated,
                        prompt = prompt.len(),
                        "the server did not take the named cached prefix; sending whole prompts from now on"
                    );
                    drop(lease);
                    memory.disable();
                }
                Err(BackendError::Status { status: 404, .. }) => {
                    debug!(
                        slot = lease.slot,
                        n = lease.n,
                        "the slot no longer holds the named prefix, or is busy; sending the whole prompt"
                    );
                    memory.misses.fetch_add(1, Ordering::Relaxed);
                    drop(lease);
                }
                Err(e) => return Err(e),
            }
        }
        body.insert("prompt".into(), json!(prompt));
        let c: Completion = self
            .ep
            .post_json("/completion", &Value::Object(body))
            .await?;
        if let Some(slot) = c.id_slot {
            memory.remember(slot, prompt);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same bytes the patch hashes: FNV-1a 64's published vector for "a" is 0xaf63dc4c8601ec8c;
    /// token 97 is "a\0\0\0".
    #[test]
    fn the_hash_is_fnv1a_over_little_endian_ids() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"a" {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        assert_eq!(h, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&[97]), fnv1a(&[97, 0]));
        assert_ne!(fnv1a(&[1, 2]), fnv1a(&[2, 1]));
    }

    fn memory(n_slots: usize) -> SlotMemory {
        let m = SlotMemory::default();
        m.configure(true, n_slots);
        m
    }

    #[test]
    fn a_prompt_names_the_slot_holding_most_of_it() {
        let m = memory(3);
        let a: Vec<TokenId> = (0..100).collect();
        let b: Vec<TokenId> = (0..60).chain(500..540).collect();
        m.remember(0, &b);
        m.remember(2, &a);
        let mut next = a.clone();
        next.extend([7, 8]);
        let lease = m.lease(&next).expect("slot 2 holds 100 of its tokens");
        assert_eq!((lease.slot, lease.n), (2, 100));
        // Busy while named: a second request with the same context takes slot 0's 60 tokens.
        let other = m.lease(&next).expect("slot 0 holds 60");
        assert_eq!((other.slot, other.n), (0, 60));
        lease.settle(&next);
        drop(other); // failed: slot 0 is forgotten
        assert_eq!(m.lease(&b).map(|l| l.slot), Some(2)); // 60 of b's tokens, in slot 2
    }

    #[test]
    fn short_prefixes_and_whole_prompts_go_unnamed_or_leave_a_token() {
        let m = memory(1);
        let short: Vec<TokenId> = (0..(MIN_PREFIX as TokenId - 1)).collect();
        m.remember(0, &short);
        assert!(m.lease(&short).is_none());
        let long: Vec<TokenId> = (0..200).collect();
        m.remember(0, &long);
        // The same prompt again: all but its last token are named.
        assert_eq!(m.lease(&long).map(|l| l.n), Some(199));
    }

    #[test]
    fn a_server_without_the_field_is_never_named() {
        let m = SlotMemory::default();
        m.configure(false, 4);
        let p: Vec<TokenId> = (0..200).collect();
        m.remember(0, &p);
        assert!(m.lease(&p).is_none());
        assert_eq!(m.stats(), None);
        // Reconfigured with another slot count: nothing remembered survives.
        let m = memory(2);
        m.remember(1, &p);
        m.configure(true, 3);
        assert!(m.lease(&p).is_none());
    }
}
