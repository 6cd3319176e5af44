//! Who may use the proxy, and how much of it at once.
//!
//! API keys are compared in constant time and never logged. Concurrency limits answer 429 at once
//! instead of queueing, so a client that floods the proxy learns it immediately and everyone else
//! keeps being served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The limits a proxy enforces; from the config file.
#[derive(Debug, Clone)]
pub struct Limits {
    pub api_keys: Vec<String>,
    pub max_concurrent: usize,
    pub max_concurrent_per_client: usize,
    pub max_tokens: Option<usize>,
    /// `max_tokens` for requests that name none (below `max_tokens`, which takes its place).
    pub default_max_tokens: Option<usize>,
    /// The control routes answer any address without API keys (else: loopback, or a key).
    pub remote_control: bool,
}

/// Counts in-flight generations, in total and per client address.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    in_flight: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Held while a generation runs (streams included); releases its place when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    client: IpAddr,
    /// The pairing's admission while it is not drained (`api::drain`): held as long as the
    /// generation runs, so a drain waits for it.
    hold: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
}

impl Permit {
    /// Keep the pairing's admission for as long as this permit lives.
    pub fn hold(&mut self, guard: Option<tokio::sync::OwnedRwLockReadGuard<()>>) {
        self.hold = guard;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut guard = self
            .gate
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0 = guard.0.saturating_sub(1);
        if let Some(n) = guard.1.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                guard.1.remove(&self.client);
            }
        }
    }
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Gate {
            limits,
            in_flight: Mutex::new((0, HashMap::new())),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// `Ok` when no key is configured or the request carries one of them as a Bearer token.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.limits.api_keys.is_empty() {
            return Ok(());
        }
        // Anthropic's clients (`/v1/messages`, forwarded to the target) send the key as
        // `x-api-key`.
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .or_else(|| {
                headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
            });
        let Some(presented) = presented else {
            return Err(unauthorized(
                "Missing API key: send it as `Authorization: Bearer <key>`.",
            ));
        };
        // Compare against every key (no early exit), each in constant time. The comparison is of
        // SHA-256 digests, so it takes the same time whatever the lengths (comparing the keys
        // themselves returns at once on a length mismatch, which tells the key's length).
        let presented = Sha256::digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for key in &self.limits.api_keys {
            ok |= Sha256::digest(key.as_bytes()).ct_eq(&presented);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(unauthorized("Incorrect API key provided."))
        }
    }

    /// The control routes (drain, resume, the proxy's log): with API keys configured, a valid key
    /// (from any address); without, only clients on loopback, unless `remote_control` is on.
    pub fn authorize_control(&self, headers: &HeaderMap, client: IpAddr) -> Result<(), ApiError> {
        if !self.limits.api_keys.is_empty() {
            return self.authorize(headers);
        }
        if self.limits.remote_control || is_loopback(client) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "Control routes answer only loopback when no API keys are configured (this request came from {client}): configure api_keys, or set remote_control = true."
        )))
    }

    /// A place for one more generation from `client`, or 429.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Permit, ApiError> {
        let mut guard = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.0 >= self.limits.max_concurrent {
            return Err(too_many(format!(
                "The proxy is serving its limit of {} requests at once; retry shortly.",
                self.limits.max_concurrent
            )));
        }
        let mine = guard.1.get(&client).copied().unwrap_or(0);
        if mine >= self.limits.max_concurrent_per_client {
            return Err(too_many(format!(
                "You have {mine} requests in flight, the limit per client; retry when one finishes."
            )));
        }
        guard.0 += 1;
        *guard.1.entry(client).or_insert(0) += 1;
        Ok(Permit {
            gate: self.clone(),
            client,
            hold: None,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` work too.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Loopback, including IPv4 loopback mapped into IPv6 (`::ffff:127.0.0.1`).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
}

fn too_many(message: String) -> ApiError {
    ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message,
        kind: "requests",
        param: None,
        code: Some("rate_limit_exceeded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(keys: &[&str], total: usize, per_client: usize) -> Arc<Gate> {
        Gate::new(Limits {
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            max_concurrent: total,
            max_concurrent_per_client: per_client,
            max_tokens: None,
            default_max_tokens: None,
            remote_control: false,
        })
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            v.parse().expect("valid header"),
        );
        h
    }

    #[test]
    fn keys_are_checked_only_when_configured() {
        assert!(gate(&[], 1, 1).authorize(&HeaderMap::new()).is_ok());
        let g = gate(&["sk-one", "sk-two"], 1, 1);
        assert!(g.authorize(&bearer("Bearer sk-two")).is_ok());
        assert_eq!(
            g.authorize(&bearer("Bearer sk-three")).unwrap_err().status,
            401
        );
        assert_eq!(g.authorize(&HeaderMap::new()).unwrap_err().status, 401);
        assert_eq!(g.authorize(&bearer("sk-one")).unwrap_err().status, 401);
        // The scheme is case-insensitive; a prefix or extension of a key is not the key.
        assert!(g.authorize(&bearer("bearer sk-one")).is_ok());
        assert!(g.authorize(&bearer("BEARER  sk-one ")).is_ok());
        assert_eq!(
            g.authorize(&bearer("Bearer sk-on")).unwrap_err().status,
            401
        );
        assert_eq!(
            g.authorize(&bearer("Bearer sk-one1")).unwrap_err().status,
            401
        );
        assert_eq!(g.authorize(&bearer("Bearer ")).unwrap_err().status, 401);
    }

    #[test]
    fn control_routes_need_loopback_or_a_key() {
        let lan: IpAddr = "192.168.1.20".parse().expect("ip");
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let open = gate(&[], 1, 1);
        assert!(open.authorize_control(&HeaderMap::new(), lo).is_ok());
        assert!(open.authorize_control(&HeaderMap::new(), mapped).is_ok());
        assert_eq!(
            open.authorize_control(&HeaderMap::new(), lan)
                .unwrap_err()
                .status,
            403
        );
        let mut limits = open.limits().clone();
        limits.remote_control = true;
        assert!(Gate::new(limits)
            .authorize_control(&HeaderMap::new(), lan)
            .is_ok());
        let keyed = gate(&["sk-one"], 1, 1);
        assert_eq!(
            keyed
                .authorize_control(&HeaderMap::new(), lo)
                .unwrap_err()
                .status,
            401
        );
        assert!(keyed
            .authorize_control(&bearer("Bearer sk-one"), lan)
            .is_ok());
    }

    #[test]
    fn concurrency_is_limited_in_total_and_per_client_and_released_on_drop() {
        let g = gate(&[], 3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let p1 = g.admit(a).expect("first");
        let _p2 = g.admit(a).expect("second");
        assert_eq!(g.admit(a).unwrap_err().status, 429);
        let _p3 = g.admit(b).expect("other client");
        assert_eq!(g.admit(b).unwrap_err().status, 429);
        drop(p1);
        assert!(g.admit(a).is_ok());
    }
}
