//! `tightwad build` and its rollback on this host: the source received on the request's stream,
//! the build's progress streamed back while it runs.

use tightwad_protocol::messages::*;
use tightwad_protocol::server::RequestStream;

use super::Agent;
use crate::transfer;

impl Agent {
    fn build_context(&self) -> crate::build::BuildContext<'_> {
        crate::build::BuildContext {
            config: &self.config,
            supervisor: &self.supervisor,
            models: &self.models,
        }
    }

    /// `Request::RollbackBuild`: back to the previous build, streaming `BuildProgress` frames.
    pub(super) async fn rollback(
        &self,
        stream: &mut RequestStream,
    ) -> Result<Option<Reply>, Reply> {
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

    /// `Request::Build`: receive the tarball on this stream (as a model upload), then build,
    /// smoke-test and switch, streaming `BuildProgress` frames.
    pub(super) async fn build(
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
