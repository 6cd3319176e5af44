//! Starting a proxy: build the pairings, bind, serve until shut down.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use crate::api::{self, AppState};
use crate::config::ProxyConfig;
use crate::engine::Pairing;
use crate::metrics::Metrics;

/// A proxy bound to its address, ready to serve.
pub struct Proxy {
    listener: TcpListener,
    state: Arc<AppState>,
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
        });
        let hosts = Arc::new(crate::api::dashboard::HostsView::default());
        let drains =
            crate::api::drain::Drains::new(pairings.iter().map(|p| p.config.name.as_str()));
        let state = Arc::new(AppState {
            recent: Default::default(),
            hosts,
            pairings,
            gate,
            metrics,
            max_body_bytes: config.max_body_bytes,
            started,
            drains,
        });
        Ok(Proxy { listener, state })
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

    pub fn pairings(&self) -> &[Arc<Pairing>] {
        &self.state.pairings
    }

    /// Probe every pairing once so the log says at start-up whether speculation is on and why.
    pub async fn probe(&self) {
        for p in &self.state.pairings {
            if let Err(e) = p.info().await {
                tracing::warn!(pairing = %p.config.name, error = %e, "target not reachable yet; will retry on the first request");
            }
        }
    }

    /// Serve until `shutdown` resolves; in-flight streams are allowed to finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.listener.local_addr()?;
        info!(%addr, "tightwad proxy listening");
        let app =
            api::router(self.state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    }
}
