//! The HTTP side every server kind shares: one [`Endpoint`] per server with its connection pool,
//! timeouts, the retry of a request that never reached the server, the wait for a restarting
//! target, and the mapping of failures to [`BackendError`]s (so the API layer maps them the same
//! way whatever server answered).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

use super::types::Role;
use super::BackendError;

/// How long an idle pooled connection is kept. llama-server (cpp-httplib) closes a kept-alive
/// connection after 5 s idle (`Keep-Alive: timeout=5`): a pool that kept it longer would hand out
/// connections the server has already closed, all of them at once after a burst. Below the
/// server's figure, the pool drops them first.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const RESTART_POLL: Duration = Duration::from_millis(200);

/// The HTTP client for one server: connections kept for reuse (a round is two requests; a new TCP
/// handshake each time would add an RTT), no Nagle delay on the small verify requests, and a short
/// connect timeout so a dead host is found quickly.
pub(crate) fn http_client(
    server: &'static str,
    base: &str,
) -> Result<reqwest::Client, BackendError> {
    client_builder()
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build()
        .map_err(|source| unreachable(server, base, source))
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
}

fn unreachable(server: &'static str, url: &str, source: reqwest::Error) -> BackendError {
    BackendError::Unreachable {
        server,
        url: url.to_string(),
        source,
    }
}

/// A server's limit on JSON requests in flight: its size, and the turns.
type JsonLimit = (usize, Arc<Semaphore>);

/// One server's base URL, pooled client and timeouts.
#[derive(Debug, Clone)]
pub struct Endpoint {
    role: Role,
    base: String,
    http: reqwest::Client,
    /// A client that keeps no idle connection: the retry of a request that could not be sent on a
    /// pooled connection must really open a new one (the pool would hand out the next connection
    /// that went stale at the same moment).
    fresh: reqwest::Client,
    timeout: Duration,
    /// How long a request waits for a server that refuses connections or is loading its model
    /// (an agent restarting it, e.g. onto a new build by `tightwad build`), before failing.
    restart_wait: Duration,
    /// Since when the server has been refusing: past `restart_wait` it is down, not
    /// restarting, and requests fail at once until it answers again.
    refusing_since: Arc<Mutex<Option<Instant>>>,
    /// How many JSON requests may be in flight at once ([`Endpoint::limit_requests`]); `None`
    /// until the server's slots are known.
    json_limit: Arc<Mutex<Option<JsonLimit>>>,
}

impl Endpoint {
    pub fn new(
        role: Role,
        base_url: &str,
        timeout: Duration,
        restart_wait: Duration,
    ) -> Result<Self, BackendError> {
        let base = base_url.trim_end_matches('/').to_string();
        let http = http_client(role.as_str(), &base)?;
        let fresh = client_builder()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|source| unreachable(role.as_str(), &base, source))?;
        Ok(Endpoint {
            role,
            base,
            http,
            fresh,
            timeout,
            restart_wait,
            refusing_since: Default::default(),
            json_limit: Default::default(),
        })
    }

    /// Keep at most `n` JSON requests (verifications, drafts, tokenizations) in flight to this
    /// server; the rest wait here, in order, within the request timeout. Why: llama-server's HTTP
    /// library serves each connection on one thread of a fixed pool (at least slots + 2 threads)
    /// and keeps a kept-alive connection's thread until that connection closes. A proxy with more
    /// requests in flight than that opens connections the server queues behind connections that
    /// never go idle under load, and a request on one of them waits out its whole timeout (seen:
    /// `/tokenize` timing out at 30 s in the 64-stream load test). Set from the server's slots by
    /// the probe; a changed figure (the server restarted with another `-np`) replaces the limit.
    pub fn limit_requests(&self, n: usize) {
        let n = n.max(1);
        let mut limit = self
            .json_limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limit.as_ref().map(|(size, _)| *size) != Some(n) {
            *limit = Some((n, Arc::new(Semaphore::new(n))));
        }
    }

    /// A turn among the JSON requests to this server (none needed before its slots are known).
    async fn json_turn(
        &self,
        path: &str,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, BackendError> {
        let limit = self
            .json_limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, s)| Arc::clone(s));
        let Some(limit) = limit else {
            return Ok(None);
        };
        match tokio::time::timeout(self.timeout, limit.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Some(permit)),
            // Closed: never (the semaphore is only replaced, not closed); go without a turn.
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(self.timed_out(path, self.timeout)),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn server(&self) -> &'static str {
        self.role.as_str()
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A reply that could not be understood.
    pub fn malformed(&self, path: &str, detail: impl Into<String>) -> BackendError {
        BackendError::Malformed {
            server: self.server(),
            path: path.to_string(),
            detail: detail.into(),
        }
    }

    /// A request to `path` that waited `limit` in vain.
    fn timed_out(&self, path: &str, limit: Duration) -> BackendError {
        BackendError::Timeout {
            server: self.server(),
            path: path.to_string(),
            seconds: limit.as_secs(),
        }
    }

    /// How a request that got no HTTP answer failed: a timeout, or the server was not reachable.
    pub fn send_error(&self, path: &str, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            self.timed_out(path, self.timeout)
        } else {
            unreachable(self.server(), &self.url(path), e)
        }
    }

    /// The response when its status is a success, else the server's own error text (shortened).
    pub async fn check_status(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, BackendError> {
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        Err(BackendError::Status {
            server: self.server(),
            path: path.to_string(),
            status,
            body: truncate(&body, 500),
        })
    }

    /// Send a request built on a client (`build` gets the client to use) and return the server's
    /// reply whatever its status. A request that could not even be sent (a pooled keep-alive
    /// connection the server had already closed) goes once more on a NEW connection; a server
    /// that refuses or is loading is waited for up to `restart_wait`. Only for requests without
    /// side effects beyond the KV cache.
    pub async fn send_raw(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        self.send_raw_with(path, build, None).await
    }

    /// [`Endpoint::send_raw`] for a reply relayed as it comes (a forwarded request): each attempt
    /// must bring the response HEAD within the endpoint's timeout, or the request fails with
    /// [`BackendError::Timeout`]; the body, streamed or not, is not bounded (a long answer keeps
    /// going).
    pub async fn send_raw_head_within(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        self.send_raw_with(path, build, Some(self.timeout)).await
    }

    /// [`Endpoint::send_once`], the response head within the endpoint's timeout.
    pub async fn send_once_head_within(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        self.send_once_with(path, build, Some(self.timeout)).await
    }

    async fn send_once_with(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        head: Option<Duration>,
    ) -> Result<reqwest::Response, BackendError> {
        self.attempt(path, build(&self.http), head)
            .await?
            .map_err(|e| self.send_error(path, e))
    }

    async fn send_raw_with(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        head: Option<Duration>,
    ) -> Result<reqwest::Response, BackendError> {
        let result = match self.attempt(path, build(&self.http), head).await? {
            Err(e) if !e.is_timeout() && (e.is_request() || e.is_connect()) => {
                tracing::debug!(server = self.server(), error = %e, "retrying once on a fresh connection");
                self.attempt(path, build(&self.fresh), head).await?
            }
            other => other,
        };
        self.wait_out_a_restart(path, result, &build, head)
            .await?
            .map_err(|e| self.send_error(path, e))
    }

    /// One send; with `head`, the response head must come within it.
    async fn attempt(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
        head: Option<Duration>,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, BackendError> {
        match head {
            None => Ok(req.send().await),
            Some(t) => tokio::time::timeout(t, req.send())
                .await
                .map_err(|_| self.timed_out(path, t)),
        }
    }

    /// One attempt, no retry and no waiting for a restart (health checks, metrics: their callers
    /// want to know how the server is now).
    pub async fn send_once(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        self.send_once_with(path, build, None).await
    }

    /// A request as a client sent it (method, path with query, content type, raw body) on client
    /// `c`, for the routes the proxy forwards unchanged.
    pub fn raw_request(
        &self,
        c: &reqwest::Client,
        method: &reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        body: &bytes::Bytes,
    ) -> reqwest::RequestBuilder {
        let req = c
            .request(method.clone(), self.url(path_and_query))
            .body(body.clone());
        match content_type {
            Some(ct) => req.header(reqwest::header::CONTENT_TYPE, ct),
            None => req,
        }
    }

    /// `Ok(true)` when `/health` answers with a success (the model is loaded and the server takes
    /// requests); one attempt, no waiting.
    pub async fn healthy(&self) -> Result<bool, BackendError> {
        let resp = self
            .send_once("/health", |c| {
                c.get(self.url("/health")).timeout(self.timeout)
            })
            .await?;
        Ok(resp.status().is_success())
    }

    /// [`Endpoint::send_raw`], then a non-success status becomes a [`BackendError::Status`].
    pub async fn send(
        &self,
        path: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BackendError> {
        let resp = self.send_raw(path, build).await?;
        self.check_status(path, resp).await
    }

    /// A server that refuses connections, or answers 503 while it loads its model, may be
    /// restarting (an agent switching it to a new build): nothing reached it, so the request is
    /// sent again until it answers or `restart_wait` has passed since it began refusing.
    async fn wait_out_a_restart(
        &self,
        path: &str,
        mut result: Result<reqwest::Response, reqwest::Error>,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        head: Option<Duration>,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, BackendError> {
        if self.restart_wait.is_zero() {
            return Ok(result);
        }
        loop {
            let refused = match &result {
                // Refused at once (not a timeout: an unreachable host is not restarting).
                Err(e) => e.is_connect() && !e.is_timeout(),
                Ok(resp) => resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
            };
            let since = {
                let mut slot = self
                    .refusing_since
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !refused {
                    *slot = None;
                    return Ok(result);
                }
                *slot.get_or_insert_with(Instant::now)
            };
            if since.elapsed() >= self.restart_wait {
                return Ok(result);
            }
            tracing::debug!(
                server = self.server(),
                "server refusing or loading: waiting for a restart to finish"
            );
            tokio::time::sleep(RESTART_POLL).await;
            result = self.attempt(path, build(&self.fresh), head).await?;
        }
    }

    /// The body of a successful reply as JSON of type `T`.
    pub async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> Result<T, BackendError> {
        let bytes = resp.bytes().await.map_err(|e| self.send_error(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            self.malformed(
                path,
                format!(
                    "{e} (reply began {:?})",
                    truncate(&String::from_utf8_lossy(&bytes), 200)
                ),
            )
        })
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<T, BackendError> {
        let _turn = self.json_turn(path).await?;
        let resp = self
            .send(path, |c| c.get(self.url(path)).timeout(self.timeout))
            .await?;
        self.read_json(path, resp).await
    }

    pub async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, BackendError> {
        let _turn = self.json_turn(path).await?;
        let resp = self
            .send(path, |c| {
                c.post(self.url(path)).timeout(self.timeout).json(body)
            })
            .await?;
        self.read_json(path, resp).await
    }
}

/// At most `max` bytes of `s` (on a character boundary), with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// With a limit of 2, six concurrent JSON requests reach the server at most two at a time,
    /// and all of them are answered.
    #[tokio::test]
    async fn json_requests_wait_their_turn_at_the_servers_limit() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (now, peak) = (Arc::clone(&in_flight), Arc::clone(&most));
        let app = axum::Router::new().route(
            "/x",
            axum::routing::post(move || {
                let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    axum::Json(serde_json::json!({"ok": true}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let ep = Endpoint::new(Role::Target, &url, Duration::from_secs(10), Duration::ZERO)
            .expect("endpoint");
        ep.limit_requests(2);
        let answers = futures::future::join_all((0..6).map(|_| {
            let ep = ep.clone();
            async move {
                ep.post_json::<serde_json::Value>("/x", &serde_json::json!({}))
                    .await
            }
        }))
        .await;
        assert!(answers.iter().all(|a| a.is_ok()), "{answers:?}");
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
