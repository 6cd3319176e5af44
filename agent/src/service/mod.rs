//! The agent's network service: accepts connections from pinned peers, runs the Hello exchange
//! (including the enrollment proof), authorises each request by the peer's role and dispatches it
//! to the supervisor, the inventory, the model folders or a transfer.

use crate::config::AgentConfig;
use crate::inventory::BinaryCache;
use crate::models::ModelFolders;
use crate::supervisor::{Supervisor, SupervisorError};
use crate::transfer;
use anyhow::Context;
use std::sync::Arc;
use std::time::Instant;
use tightwad_protocol::client::{close_code, ClientEndpoint};
use tightwad_protocol::identity::NodeIdentity;
use tightwad_protocol::messages::*;
use tightwad_protocol::server::{handshake, PeerConnection, RequestStream, Server};
use tightwad_protocol::token::{AgentJoin, JoinToken};
use tightwad_protocol::trust::{PeerRole, TrustStore};
use tracing::Instrument;

/// Log lines per frame (keeps frames far below the size limit).
const LOG_BATCH: usize = 200;

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
}

/// Removes a file name from `Agent::receiving` when its transfer ends, however it ends.
struct ReceivingGuard<'a> {
    set: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl Drop for ReceivingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.name);
        }
    }
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

impl Agent {
    async fn serve_connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let peer = match handshake(incoming).await {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "refused a connection");
                return;
            }
        };
        let Some(pinned) = self.trust.find(&peer.fingerprint()) else {
            // The verifier already checked this; a pin removed meanwhile ends here.
            peer.close(close_code::ENROLLMENT_REFUSED, "not pinned");
            return;
        };
        tracing::info!(peer = %pinned.name, role = ?pinned.role, "peer connected");
        if !self.hello(&peer).await {
            return;
        }
        while let Some(stream) = peer.accept().await {
            let agent = self.clone();
            let role = pinned.role;
            tokio::spawn(async move { agent.serve_request(role, stream).await }.in_current_span());
        }
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) = peer.close_reason() {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            if u64::from(close.error_code) == u64::from(close_code::ENROLLMENT_REFUSED) {
                tracing::error!(peer = %pinned.name, %reason, "the coordinator refused our enrollment (wrong or expired join token?)");
            } else if u64::from(close.error_code) == u64::from(close_code::INCOMPATIBLE) {
                tracing::error!(peer = %pinned.name, %reason, "the peer refused our protocol version");
            }
        }
    }

    /// The first stream must carry Hello; answers it with ours and, while a join token from this
    /// coordinator is pending, the enrollment proof.
    async fn hello(&self, peer: &PeerConnection) -> bool {
        let Some(mut stream) = peer.accept().await else {
            return false;
        };
        let theirs = match stream.read_request().await {
            Ok(Request::Hello(hello)) => hello,
            Ok(other) => {
                let _ = stream
                    .reply_and_finish(&Reply::error(
                        ErrorKind::BadRequest,
                        format!("expected hello first, got {}", other.kind()),
                    ))
                    .await;
                peer.close(close_code::PROTOCOL_VIOLATION, "hello first");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable hello");
                peer.close(close_code::PROTOCOL_VIOLATION, "unreadable hello");
                return false;
            }
        };
        let mut ours = Hello::ours(NodeRole::Agent, &self.config.name, capabilities());
        if let Some(testing) = &self.config.testing_protocol {
            ours.protocol_version = testing.version;
            ours.min_protocol_version = testing.version;
        }
        let negotiated = match ours.negotiate(&theirs) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(peer_software = %theirs.software_version, error = %e, "incompatible peer");
                let _ = stream
                    .reply_and_finish(&Reply::error(ErrorKind::IncompatibleVersion, e.to_string()))
                    .await;
                peer.close(close_code::INCOMPATIBLE, &e.to_string());
                return false;
            }
        };
        let join_proof = match self.join.load() {
            Ok(Some(token)) if token.coordinator == peer.fingerprint() => {
                Some(token.proof(&self.identity.fingerprint()).to_vec())
            }
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pending join token");
                None
            }
        };
        let reply = Reply::Hello(HelloReply {
            hello: ours,
            negotiated_version: negotiated,
            join_proof,
        });
        stream.reply_and_finish(&reply).await.is_ok()
    }

    async fn serve_request(self: Arc<Self>, role: PeerRole, mut stream: RequestStream) {
        let request = match stream.read_request().await {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(error = %e, "refused a request");
                return;
            }
        };
        let kind = request.kind();
        let allowed = match role {
            PeerRole::Coordinator => true,
            PeerRole::Peer | PeerRole::Agent => matches!(
                request,
                Request::ReceiveModel(_)
                    | Request::ModelManifest { .. }
                    | Request::ReadPiece { .. }
            ),
        };
        if !allowed {
            let _ = stream
                .reply_and_finish(&Reply::error(
                    ErrorKind::Forbidden,
                    format!("{kind} is reserved to the coordinator"),
                ))
                .await;
            return;
        }
        tracing::debug!(request = kind, "request");
        let result = self.dispatch(request, &mut stream).await;
        let reply = match result {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                let _ = stream.stream.finish();
                stream.stream.stopped().await;
                return;
            }
            Err(reply) => {
                if let Reply::Error(e) = &reply {
                    tracing::warn!(request = kind, error = %e.message, "request failed");
                }
                reply
            }
        };
        let _ = stream.reply_and_finish(&reply).await;
    }

    /// `Ok(Some(reply))`: one final reply; `Ok(None)`: the handler streamed its replies itself.
    async fn dispatch(
        &self,
        request: Request,
        stream: &mut RequestStream,
    ) -> Result<Option<Reply>, Reply> {
        match request {
            Request::Hello(_) => Err(Reply::error(
                ErrorKind::BadRequest,
                "hello was already exchanged",
            )),
            Request::ConfirmEnrollment => {
                self.join.clear().map_err(internal)?;
                tracing::info!("enrollment confirmed by the coordinator");
                Ok(Some(Reply::Ok))
            }
            Request::Status => Ok(Some(Reply::Status(Box::new(AgentStatus {
                node_name: self.config.name.clone(),
                software_version: tightwad_protocol::SOFTWARE_VERSION.into(),
                protocol_version: tightwad_protocol::PROTOCOL_VERSION,
                uptime_secs: self.started.elapsed().as_secs(),
                processes: self.supervisor.statuses(),
                inventory: crate::inventory::gather(&self.config, &self.models, &self.binaries)
                    .await,
            })))),
            Request::Inventory => Ok(Some(Reply::Inventory(Box::new(
                crate::inventory::gather(&self.config, &self.models, &self.binaries).await,
            )))),
            Request::StartProcess { name, args } => {
                if let Some(args) = &args {
                    self.check_peer_args(&name, args)?;
                }
                self.supervisor
                    .start(&name, args)
                    .await
                    .map(|s| Some(Reply::Process(s)))
                    .map_err(supervisor_error)
            }
            Request::StopProcess { name } => self
                .supervisor
                .stop(&name)
                .await
                .map(|s| Some(Reply::Process(s)))
                .map_err(supervisor_error),
            Request::RestartProcess { name } => self
                .supervisor
                .restart(&name)
                .await
                .map(|s| Some(Reply::Process(s)))
                .map_err(supervisor_error),
            Request::Logs { name, tail, follow } => {
                let managed = self.supervisor.get(&name).map_err(supervisor_error)?;
                let (lines, mut receiver) = managed.logs.tail_and_follow(tail as usize);
                for batch in lines.chunks(LOG_BATCH) {
                    stream
                        .reply(&Reply::LogLines(batch.to_vec()))
                        .await
                        .map_err(internal)?;
                }
                if follow {
                    loop {
                        match receiver.recv().await {
                            Ok(line) => {
                                if stream.reply(&Reply::LogLines(vec![line])).await.is_err() {
                                    break;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                let note = LogLine {
                                    stream: LogStream::Supervisor,
                                    line: format!("[{n} lines skipped: reader too slow]"),
                                };
                                if stream.reply(&Reply::LogLines(vec![note])).await.is_err() {
                                    break;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Ok(None)
            }
            Request::ListModels => {
                let models = self.models.clone();
                let list = tokio::task::spawn_blocking(move || models.list())
                    .await
                    .map_err(internal)?;
                Ok(Some(Reply::Models(list)))
            }
            Request::FindModel { file_name } => {
                let models = self.models.clone();
                let found = tokio::task::spawn_blocking(move || models.find(&file_name))
                    .await
                    .map_err(internal)?
                    .map_err(|e| Reply::error(ErrorKind::BadRequest, e.to_string()))?;
                Ok(Some(Reply::Models(found)))
            }
            Request::IntroducePeer { name, fingerprint } => {
                if fingerprint == self.identity.fingerprint() {
                    return Ok(Some(Reply::Ok));
                }
                self.trust
                    .pin(&name, fingerprint, PeerRole::Peer)
                    .map_err(internal)?;
                tracing::info!(peer = %name, %fingerprint, "pinned a peer introduced by the coordinator");
                Ok(Some(Reply::Ok))
            }
            Request::SendModel {
                file_name,
                to,
                max_bytes_per_second,
            } => transfer::send(
                &self.models,
                &self.client,
                &file_name,
                &to,
                max_bytes_per_second,
                stream,
            )
            .await
            .map(|summary| Some(Reply::TransferDone(summary)))
            .map_err(|e| Reply::error(ErrorKind::Transfer, e.to_string())),
            Request::ReceiveModel(offer) => {
                let folder = self.config.receive_dir().ok_or_else(|| {
                    Reply::error(
                        ErrorKind::Transfer,
                        "no model folder configured to receive into",
                    )
                })?;
                let fresh = self
                    .receiving
                    .lock()
                    .map(|mut set| set.insert(offer.file_name.clone()))
                    .unwrap_or(false);
                if !fresh {
                    return Err(Reply::error(
                        ErrorKind::Transfer,
                        format!("{} is already being received", offer.file_name),
                    ));
                }
                let _guard = ReceivingGuard {
                    set: &self.receiving,
                    name: offer.file_name.clone(),
                };
                transfer::receive(&folder, offer, stream)
                    .await
                    .map(|summary| {
                        tracing::info!(path = %summary.path, bytes = summary.bytes, resumed_from = summary.resumed_from, "model received and verified");
                        Some(Reply::TransferDone(summary))
                    })
                    .map_err(|e| Reply::error(ErrorKind::Transfer, e.to_string()))
            }
            Request::CheckProcess { name, args } => {
                // A start with these arguments would be refused: doctor reports it as a flag
                // failure, with the policy's fix.
                let refused = match &args {
                    Some(args) => self.check_peer_args(&name, args).err(),
                    None => None,
                };
                let mut check = crate::dryrun::check_process(
                    &self.supervisor,
                    &self.models,
                    &self.binaries,
                    &name,
                    args,
                )
                .await
                .map_err(supervisor_error)?;
                if let Some(Reply::Error(refused)) = refused {
                    check.flag_error = Some(refused.message);
                }
                Ok(Some(Reply::ProcessCheck(Box::new(check))))
            }
            Request::PullModel {
                file_name,
                sources,
                piece_bytes,
                max_bytes_per_second,
            } => {
                let folder = self.config.receive_dir().ok_or_else(|| {
                    Reply::error(
                        ErrorKind::Transfer,
                        "no model folder configured to receive into",
                    )
                })?;
                let fresh = self
                    .receiving
                    .lock()
                    .map(|mut set| set.insert(file_name.clone()))
                    .unwrap_or(false);
                if !fresh {
                    return Err(Reply::error(
                        ErrorKind::Transfer,
                        format!("{file_name} is already being received"),
                    ));
                }
                let _guard = ReceivingGuard {
                    set: &self.receiving,
                    name: file_name.clone(),
                };
                crate::pull::pull(
                    &folder,
                    &self.client,
                    &file_name,
                    &sources,
                    piece_bytes,
                    max_bytes_per_second,
                    stream,
                )
                .await
                .map(|summary| Some(Reply::PullDone(Box::new(summary))))
                .map_err(|e| Reply::error(ErrorKind::Transfer, e.to_string()))
            }
            Request::ModelManifest {
                file_name,
                piece_bytes,
            } => self
                .manifests
                .get(&self.models, &file_name, piece_bytes)
                .await
                .map(|m| Some(Reply::Manifest(Box::new((*m).clone()))))
                .map_err(|e| Reply::error(ErrorKind::Transfer, e.to_string())),
            Request::ReadPiece {
                file_name,
                offset,
                len,
            } => crate::pull::serve_piece(&self.models, &file_name, offset, len, stream)
                .await
                .map(|()| None)
                .map_err(|e| Reply::error(ErrorKind::Transfer, e.to_string())),
            Request::Build(request) => {
                self.config.peer.check_build().map_err(forbidden)?;
                self.build(request, stream).await
            }
            Request::RollbackBuild => {
                self.config.peer.check_build().map_err(forbidden)?;
                let _busy = self
                    .building
                    .try_lock()
                    .map_err(|_| build_error(crate::build::BuildError::Busy))?;
                let ctx = self.build_context();
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                let result = forward_progress(crate::build::rollback(&ctx, &tx), rx, stream).await;
                result
                    .map(|outcome| Some(Reply::BuildDone(Box::new(outcome))))
                    .map_err(build_error)
            }
            Request::ListDevices { rpc_servers } => {
                crate::dryrun::list_devices(&self.config, &rpc_servers)
                    .await
                    .map(|devices| Some(Reply::Devices(devices)))
                    .map_err(|e| Reply::error(ErrorKind::BadRequest, e.to_string()))
            }
            Request::ProcessMemory { name } => {
                crate::memory::process_memory(&self.supervisor, &name)
                    .await
                    .map(|m| Some(Reply::ProcessMemory(Box::new(m))))
                    .map_err(|e| Reply::error(ErrorKind::NotFound, e.to_string()))
            }
        }
    }
}

impl Agent {
    /// `[peer]`'s check of the arguments a coordinator asks `name` to start with.
    fn check_peer_args(&self, name: &str, args: &[String]) -> Result<(), Reply> {
        let (kind, configured) = self.supervisor.configured(name).map_err(supervisor_error)?;
        self.config
            .peer
            .check_args(name, kind, args, &configured, &self.config.model_dirs)
            .map_err(|refusal| {
                tracing::warn!(process = %name, %refusal, "refused a peer's arguments");
                forbidden(refusal)
            })
    }

    fn build_context(&self) -> crate::build::BuildContext<'_> {
        crate::build::BuildContext {
            config: &self.config,
            supervisor: &self.supervisor,
            models: &self.models,
        }
    }

    /// `Request::Build`: receive the tarball on this stream (as a model upload), then build,
    /// smoke-test and switch, streaming `BuildProgress` frames.
    async fn build(
        &self,
        request: BuildRequest,
        stream: &mut RequestStream,
    ) -> Result<Option<Reply>, Reply> {
        use crate::build::{BuildError, PreparedSource};
        let _busy = self
            .building
            .try_lock()
            .map_err(|_| build_error(BuildError::Busy))?;
        let source = match request.source {
            BuildSource::Tarball(offer) => {
                let folder = crate::build::incoming_dir(&self.config.state_dir);
                let sha256 = offer.sha256.clone();
                let summary = transfer::receive(&folder, offer, stream)
                    .await
                    .map_err(|e| build_error(BuildError::Upload(e)))?;
                tracing::info!(path = %summary.path, bytes = summary.bytes, "source tarball received and verified");
                PreparedSource::Tarball {
                    path: summary.path.into(),
                    sha256,
                }
            }
            BuildSource::Git { url, git_ref } => PreparedSource::Git { url, git_ref },
        };
        let ctx = self.build_context();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let work = crate::build::build(
            &ctx,
            source,
            &request.patches,
            request.backend,
            request.jobs,
            &tx,
        );
        let result = forward_progress(work, rx, stream).await;
        match &result {
            Ok(outcome) => {
                tracing::info!(build = %outcome.identity, switched = ?outcome.switched, "build done")
            }
            Err(e) => tracing::error!(error = %e, "build failed"),
        }
        result
            .map(|outcome| Some(Reply::BuildDone(Box::new(outcome))))
            .map_err(build_error)
    }
}

/// Runs `work` while sending its progress reports on `stream`; a coordinator that went away
/// does not stop the build (its result is still recorded on this host).
async fn forward_progress<T>(
    work: impl std::future::Future<Output = T>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<BuildProgress>,
    stream: &mut RequestStream,
) -> T {
    tokio::pin!(work);
    let mut listening = true;
    loop {
        tokio::select! {
            result = &mut work => {
                while let Ok(p) = rx.try_recv() {
                    if listening && stream.reply(&Reply::BuildProgress(p)).await.is_err() {
                        listening = false;
                    }
                }
                return result;
            }
            Some(p) = rx.recv() => {
                if listening && stream.reply(&Reply::BuildProgress(p)).await.is_err() {
                    listening = false;
                }
            }
        }
    }
}

fn build_error(e: crate::build::BuildError) -> Reply {
    Reply::error(ErrorKind::Build, e.to_string())
}

fn forbidden(refusal: crate::peer_policy::Refusal) -> Reply {
    Reply::error(ErrorKind::Forbidden, refusal.to_string())
}

fn internal(e: impl std::fmt::Display) -> Reply {
    Reply::error(ErrorKind::Internal, e.to_string())
}

fn supervisor_error(e: SupervisorError) -> Reply {
    let kind = match &e {
        SupervisorError::UnknownProcess(_) | SupervisorError::NoBinary { .. } => {
            ErrorKind::NotFound
        }
        SupervisorError::Flags(_) => ErrorKind::FlagRejected,
        SupervisorError::Failed { .. } => ErrorKind::ProcessFailed,
        SupervisorError::AlreadyRunning { .. } => ErrorKind::BadRequest,
    };
    Reply::error(kind, e.to_string())
}
