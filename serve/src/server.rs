//! Starting a proxy: build the pairings, bind, serve until shut down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::api::{self, AppState};
use crate::config::ProxyConfig;
use crate::engine::Pairing;
use crate::metrics::Metrics;
use crate::reload::{PairingSet, ReloadError, ReloadReport, Reloading};

pub use crate::reload::Reloader;

/// A proxy bound to its address, ready to serve.
pub struct Proxy {
    listener: TcpListener,
    state: Arc<AppState>,
    connections: ConnectionLimits,
}

/// What one connection may cost the proxy before it sends a request.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    per_client: usize,
    header_read_timeout: Duration,
}

impl Proxy {
    pub async fn bind(config: &ProxyConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let mut pairings = Vec::new();
        for (i, entry) in config.pairings.iter().enumerate() {
            let pc = entry.to_pairing_config(i);
            let pm = metrics.pairing(&pc.name);
            pairings.push(Arc::new(
                Pairing::new(pc, pm).context("setting up a pairing")?,
            ));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let gate = crate::api::guard::Gate::new(crate::api::guard::Limits {
            api_keys: config.api_keys.clone(),
            max_concurrent: config.max_concurrent_requests,
            max_concurrent_per_client: config.max_concurrent_per_client,
            max_tokens: config.max_tokens_limit,
            default_max_tokens: (config.default_max_tokens > 0)
                .then_some(config.default_max_tokens),
            remote_control: config.remote_control,
        });
        let hosts = Arc::new(crate::api::dashboard::HostsView::default());
        let drains =
            crate::api::drain::Drains::new(pairings.iter().map(|p| p.config.name.as_str()));
        let state = Arc::new(AppState {
            recent: Default::default(),
            hosts,
            pairings: PairingSet::new(pairings),
            reloader: Default::default(),
            gate,
            metrics,
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: Duration::from_secs(config.body_read_timeout_s),
            started,
            drains,
            dashboard: Default::default(),
            health: Default::default(),
            cors_origins: config.cors_origins.clone(),
        });
        let connections = ConnectionLimits {
            per_client: config.max_connections_per_client,
            header_read_timeout: Duration::from_secs(config.header_read_timeout_s),
        };
        Ok(Proxy {
            listener,
            state,
            connections,
        })
    }

    /// Show the hosts of `source` on the dashboard, refreshed every 15 s in the background (so
    /// the page never waits on a slow host).
    pub fn show_hosts(&self, source: Arc<dyn crate::api::dashboard::HostsSource>) {
        self.state
            .hosts
            .spawn_refresher(source, std::time::Duration::from_secs(15));
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The pairings served now.
    pub fn pairings(&self) -> Arc<Vec<Arc<Pairing>>> {
        self.state.pairings.current()
    }

    /// Let this proxy reload: `reader` reads the configuration again (as it was read for
    /// `running`) on [`ProxyHandle::reload`] and `POST /v1/tightwad/reload`.
    pub fn enable_reload(&self, reader: Reloader, running: ProxyConfig) {
        let _ = self.state.reloader.set(Reloading::new(reader, running));
    }

    /// A handle that reloads this proxy while it serves (the binary's SIGHUP handler holds one).
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle(self.state.clone())
    }

    /// Check every pairing's target once and probe those that answer, so the log says whether
    /// speculation is on and why, and a target that is down is named with its cause and the fix.
    /// [`Proxy::serve`] does the same in the background; this is for callers that want it done
    /// before serving (tests). It takes at most a few seconds per target.
    pub async fn probe(&self) {
        for p in self.state.pairings.current().iter() {
            let _ = api::health::check(&self.state, p).await;
        }
    }

    /// Serve until `shutdown` resolves; in-flight streams are allowed to finish.
    ///
    /// HTTP/1.1 with two limits axum's own server loop does not offer: a request's headers must
    /// arrive within `header_read_timeout_s` (else the connection is closed), and one address
    /// holds at most `max_connections_per_client` connections (a connection beyond it is closed
    /// at once), so no client can tie up the proxy with sockets that never send a request.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        info!(%addr, "tightwad proxy listening");
        // The targets are checked (and probed) in the background: requests are served from now.
        let monitor = api::health::spawn_monitor(self.state.clone());
        let _monitor = AbortOnDrop(monitor);
        let router = api::router(self.state);
        let limits = self.connections;
        let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Default::default();
        // Each connection task holds a receiver; on shutdown the sender says so and then waits
        // until every receiver is gone (every connection finished its in-flight requests).
        let (close_tx, close_rx) = tokio::sync::watch::channel(());
        tokio::pin!(shutdown);
        loop {
            let (stream, remote) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let Some(slot) = ConnectionSlot::take(&per_address, remote.ip(), limits.per_client)
            else {
                warn!(client = %remote.ip(), limit = limits.per_client, "connection refused: too many open connections from this address");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = router
                .clone()
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(remote));
                    req.map(Body::new)
                });
            let mut closing = close_rx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout);
                let conn = builder
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            debug!(client = %remote, error = %e, "connection ended with an error");
                        }
                    }
                    _ = closing.changed() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                    }
                }
                drop(closing);
            });
        }
        drop(close_rx);
        drop(self.listener);
        let _ = close_tx.send(());
        close_tx.closed().await;
        Ok(())
    }
}

/// Reloads a serving proxy's configuration.
#[derive(Clone)]
pub struct ProxyHandle(Arc<AppState>);

impl ProxyHandle {
    /// Read the configuration again and serve its pairings (added, removed, changed): requests
    /// in flight finish on the pairings they started with. The outcome is logged too.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        api::reload_now(&self.0)
    }
}

/// Stops a background task when dropped (the proxy stopped serving).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One open connection from an address, counted until dropped.
struct ConnectionSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ConnectionSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr, limit: usize) -> Option<Self> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
