//! The agent's network service: accepts connections from pinned peers, runs the Hello exchange
//! (including the enrollment proof), authorises each request by the peer's role and dispatches it
//! to the supervisor, the inventory, the model folders or a transfer.
//!
//! `connection`: one peer's handshake, Hello and requests; `dispatch`: what each request does;
//! `build`: `tightwad build` on this host.

mod build;
mod connection;
mod dispatch;

use crate::config::AgentConfig;
use crate::inventory::BinaryCache;
use crate::models::ModelFolders;
use crate::supervisor::Supervisor;
use anyhow::Context;
use std::sync::Arc;
use std::time::Instant;
use tightwad_protocol::client::ClientEndpoint;
use tightwad_protocol::identity::NodeIdentity;
use tightwad_protocol::messages::*;
use tightwad_protocol::server::Server;
use tightwad_protocol::token::{AgentJoin, JoinToken};
use tightwad_protocol::trust::{PeerRole, TrustStore};
use tracing::Instrument;

pub struct Agent {
    config: AgentConfig,
    identity: NodeIdentity,
    trust: Arc<TrustStore>,
    join: AgentJoin,
    supervisor: Supervisor,
    models: ModelFolders,
    binaries: BinaryCache,
    client: ClientEndpoint,
    started: Instant,
    /// File names being received right now: a second transfer of the same file would write the
    /// same partial file.
    receiving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Piece manifests of files this agent serves to pulling peers.
    manifests: crate::pull::ManifestCache,
    /// Held while a `tightwad build` (or rollback) runs: one at a time.
    building: tokio::sync::Mutex<()>,
    /// Where the builds stand, for coordinators that follow one again after a lost link.
    build_state: tokio::sync::watch::Sender<build::BuildState>,
}

fn capabilities() -> Vec<Capability> {
    vec![
        Capability::Supervisor,
        Capability::Inventory,
        Capability::Logs,
        Capability::Models,
        Capability::ModelTransfer,
        Capability::Build,
    ]
}

/// Runs the agent until SIGINT/SIGTERM; stops its processes on the way out. SIGHUP re-reads
/// `config_file` (when there is one) and applies its `[[process]]` entries.
pub async fn run(
    config: AgentConfig,
    config_file: Option<std::path::PathBuf>,
    join: Option<String>,
    print_fingerprint: bool,
) -> anyhow::Result<()> {
    let identity = NodeIdentity::load_or_create(&config.state_dir, &config.name)
        .context("loading the agent's identity")?;
    if print_fingerprint {
        println!("{}", identity.fingerprint());
        return Ok(());
    }
    let trust = TrustStore::load(&config.state_dir).context("loading pinned peers")?;
    let join_state = AgentJoin::new(&config.state_dir);
    if let Some(token) = join {
        let token = accept_join(&trust, &join_state, &token)?;
        tracing::info!(coordinator = %token.coordinator, "pinned the coordinator from the join token; waiting for it to connect");
    }
    let server = Server::bind(config.listen, &identity, trust.clone())
        .with_context(|| format!("listening on {}", config.listen))?;
    let client = ClientEndpoint::new(
        identity.clone(),
        Hello::ours(NodeRole::Agent, &config.name, capabilities()),
    )?;
    crate::build::restore(&config);
    let agent = Arc::new(Agent {
        supervisor: Supervisor::new(&config),
        models: ModelFolders::new(config.model_dirs.clone()),
        binaries: BinaryCache::default(),
        identity,
        trust,
        join: join_state,
        client,
        started: Instant::now(),
        receiving: Default::default(),
        manifests: Default::default(),
        building: Default::default(),
        build_state: tokio::sync::watch::Sender::new(build::BuildState::Idle),
        config,
    });
    tracing::info!(
        name = %agent.config.name,
        listen = %server.local_addr()?,
        fingerprint = %agent.identity.fingerprint(),
        "tightwad-agent {} listening (peer protocol v{})",
        tightwad_protocol::SOFTWARE_VERSION,
        tightwad_protocol::PROTOCOL_VERSION
    );
    // Opt-in LAN announcement; a failure to announce is logged, the agent still serves.
    let _announcer = if agent.config.discovery.enabled {
        crate::discovery::Announcer::start(
            &agent.config.discovery,
            &agent.config.name,
            server.local_addr()?,
            agent.identity.fingerprint(),
        )
        .map_err(|e| tracing::error!(error = %format!("{e:#}"), "LAN discovery is off"))
        .ok()
    } else {
        None
    };
    // Under systemd (`Type=notify`): ready once the endpoint listens; a no-op elsewhere.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    for name in Supervisor::names_to_autostart(&agent.config) {
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = agent.supervisor.start(&name, None).await {
                tracing::error!(process = %name, error = %e, "autostart failed");
            }
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            incoming = server.accept() => {
                let Some(incoming) = incoming else { break };
                let agent = agent.clone();
                let span = tracing::info_span!("peer", remote = %incoming.remote_address());
                tokio::spawn(async move { agent.serve_connection(incoming).await }.instrument(span));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => {
                let agent = agent.clone();
                let file = config_file.clone();
                tokio::spawn(async move { agent.reload(file.as_deref()).await });
            }
        }
    }
    tracing::info!("shutting down: stopping supervised processes");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    agent.supervisor.stop_all().await;
    server.close();
    Ok(())
}

impl Agent {
    /// SIGHUP: read the config file again and apply its `[[process]]` entries (a bad file is
    /// logged and changes nothing). Other settings (listen, folders, …) apply at a restart.
    async fn reload(&self, file: Option<&std::path::Path>) {
        let Some(file) = file else {
            tracing::warn!("SIGHUP: this agent runs without a config file; nothing to reload");
            return;
        };
        tracing::info!(file = %file.display(), "SIGHUP: reloading the configuration");
        let (config, warnings) = match AgentConfig::load_with_warnings(Some(file)) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("reload refused, the running configuration is kept: {e:#}");
                return;
            }
        };
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let report = self.supervisor.reload(&config).await;
        for (name, reason) in &report.failed_starts {
            tracing::error!(process = %name, "start after reload failed: {reason}");
        }
        tracing::info!(
            unchanged = ?report.unchanged,
            changed = ?report.changed,
            added = ?report.added,
            removed = ?report.removed,
            "configuration reloaded ([[process]] entries; other settings apply at a restart)"
        );
    }
}

/// Pins the coordinator a join token names and keeps the token for its first connection.
fn accept_join(
    trust: &TrustStore,
    join_state: &AgentJoin,
    token: &str,
) -> anyhow::Result<JoinToken> {
    let token: JoinToken = token.parse().context("parsing --join token")?;
    trust
        .pin("coordinator", token.coordinator, PeerRole::Coordinator)
        .context("pinning the coordinator")?;
    join_state.save(&token).context("saving the join token")?;
    Ok(token)
}

/// `tightwad-agent --join TOKEN --join-only`: what `--join` does at start, without serving; the
/// agent (a service, restarted afterwards) answers the coordinator's first connection with it.
pub fn join_only(state_dir: &std::path::Path, token: &str) -> anyhow::Result<()> {
    let trust = TrustStore::load(state_dir).context("loading pinned peers")?;
    let token = accept_join(&trust, &AgentJoin::new(state_dir), token)?;
    println!(
        "pinned coordinator {} in {}; restart the agent (e.g. `sudo systemctl restart tightwad-agent`) and run `tightwad status` on the coordinator to finish enrolling",
        token.coordinator,
        state_dir.display()
    );
    Ok(())
}
