//! The fleet as the proxy's dashboard shows it: the agents' status, asked through the peer
//! protocol by the coordinator and handed to the serving library as a [`HostsSource`].

use std::path::PathBuf;

use futures::future::BoxFuture;
use serde_json::{json, Value};
use tightwad_serve::api::dashboard::HostsSource;

use crate::cluster::{Fleet, FleetConfig};

/// The hosts of one `tightwad.toml`, re-read on every snapshot (so an edited file shows up).
pub struct FleetHosts {
    config: PathBuf,
}

impl FleetHosts {
    pub fn new(config: PathBuf) -> Self {
        FleetHosts { config }
    }
}

impl HostsSource for FleetHosts {
    fn snapshot(&self) -> BoxFuture<'_, anyhow::Result<Value>> {
        Box::pin(async move {
            let fleet = Fleet::open(FleetConfig::load_existing(&self.config)?)?;
            let reports = crate::fleet::status::collect(&fleet, None).await?;
            Ok(json!({ "hosts": reports }))
        })
    }
}

/// Show the hosts of `config`'s file on `proxy`'s dashboard, when the file lists any.
pub fn attach(proxy: &tightwad_serve::server::Proxy, config: &tightwad_serve::config::ProxyConfig) {
    if let (Some(path), false) = (&config.source, config.hosts.is_empty()) {
        proxy.show_hosts(std::sync::Arc::new(FleetHosts::new(path.clone())));
    }
}
