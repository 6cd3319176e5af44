//! What each request does: the supervisor, the inventory, logs, the model folders, transfers and
//! pulls, dry runs; builds are in `build`.

use tightwad_protocol::messages::*;
use tightwad_protocol::server::RequestStream;
use tightwad_protocol::trust::PeerRole;

use super::Agent;
use crate::supervisor::SupervisorError;
use crate::transfer;

/// Log lines per frame (keeps frames far below the size limit).
const LOG_BATCH: usize = 200;

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

impl Agent {
    /// `Ok(Some(reply))`: one final reply; `Ok(None)`: the handler streamed its replies itself.
    pub(super) async fn dispatch(
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
                let (folder, _receiving) = self.receive_slot(&offer.file_name)?;
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
                let (folder, _receiving) = self.receive_slot(&file_name)?;
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
                self.rollback(stream).await
            }
            Request::FollowBuild => {
                self.config.peer.check_build().map_err(forbidden)?;
                self.follow_build(stream).await
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
    /// The folder a file named `file_name` is received into, and its place in
    /// `Agent::receiving` (given up when the guard drops): refused while another transfer of
    /// that name runs, as it would write the same partial file.
    fn receive_slot(
        &self,
        file_name: &str,
    ) -> Result<(std::path::PathBuf, ReceivingGuard<'_>), Reply> {
        let folder = self.config.receive_dir().ok_or_else(|| {
            Reply::error(
                ErrorKind::Transfer,
                "no model folder configured to receive into",
            )
        })?;
        let fresh = self
            .receiving
            .lock()
            .map(|mut set| set.insert(file_name.to_string()))
            .unwrap_or(false);
        if !fresh {
            return Err(Reply::error(
                ErrorKind::Transfer,
                format!("{file_name} is already being received"),
            ));
        }
        let guard = ReceivingGuard {
            set: &self.receiving,
            name: file_name.to_string(),
        };
        Ok((folder, guard))
    }

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
