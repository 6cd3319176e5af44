//! `tightwad build` and its rollback on this host: the source received on the request's stream,
//! the build's progress streamed back while it runs, and published (`BuildState`) for a
//! coordinator that lost its link and follows the build again (`Request::FollowBuild`).

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
        self.build_state.send_replace(BuildState::Running(None));
        let work = crate::build::rollback(&ctx, &tx);
        let result = forward_progress(work, rx, stream, &self.build_state).await;
        self.finished(result)
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
        // From here a follower hears of this build, not of the one before (an upload cut off
        // ends it too).
        self.build_state.send_replace(BuildState::Running(None));
        let source = match request.source {
            BuildSource::Tarball(offer) => {
                let folder = crate::build::incoming_dir(&self.config.state_dir);
                let sha256 = offer.sha256.clone();
                let summary = match transfer::receive(&folder, offer, stream).await {
                    Ok(summary) => summary,
                    Err(e) => return self.finished(Err(BuildError::Upload(e))),
                };
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
        let result = forward_progress(work, rx, stream, &self.build_state).await;
        match &result {
            Ok(outcome) => {
                tracing::info!(build = %outcome.identity, switched = ?outcome.switched, "build done")
            }
            Err(e) => tracing::error!(error = %e, "build failed"),
        }
        self.finished(result)
    }

    /// Publishes how a build ended (for followers) and makes it this request's reply.
    fn finished(
        &self,
        result: Result<BuildOutcome, crate::build::BuildError>,
    ) -> Result<Option<Reply>, Reply> {
        let result = result.map(Box::new).map_err(|e| e.to_string());
        self.build_state
            .send_replace(BuildState::Finished(result.clone()));
        reply_to(result)
    }

    /// `Request::FollowBuild`: the running build's progress from where it is, then its end; or
    /// how the last one ended.
    pub(super) async fn follow_build(
        &self,
        stream: &mut RequestStream,
    ) -> Result<Option<Reply>, Reply> {
        let mut state = self.build_state.subscribe();
        loop {
            let now = state.borrow_and_update().clone();
            match now {
                BuildState::Idle => {
                    return Err(Reply::error(
                        ErrorKind::NotFound,
                        "no build has run on this host since its agent started (was it restarted?)",
                    ))
                }
                BuildState::Running(None) => {}
                BuildState::Running(Some(progress)) => {
                    if stream.reply(&Reply::BuildProgress(progress)).await.is_err() {
                        // The follower went away; the build does not care.
                        return Ok(None);
                    }
                }
                BuildState::Finished(result) => return reply_to(result),
            }
            if state.changed().await.is_err() {
                return Err(Reply::error(ErrorKind::Internal, "the agent is stopping"));
            }
        }
    }
}

/// The final reply of a build, to its requester and to each follower alike.
fn reply_to(result: Result<Box<BuildOutcome>, String>) -> Result<Option<Reply>, Reply> {
    result
        .map(|outcome| Some(Reply::BuildDone(outcome)))
        .map_err(|e| Reply::error(ErrorKind::Build, e))
}

/// Where this host's builds stand, for `Request::FollowBuild`.
#[derive(Debug, Clone, Default)]
pub(crate) enum BuildState {
    /// No build since the agent started.
    #[default]
    Idle,
    /// A build or rollback runs; its latest progress report.
    Running(Option<BuildProgress>),
    /// The last one ended so (its outcome, or its error as the requester got it).
    Finished(Result<Box<BuildOutcome>, String>),
}

/// Runs `work` while sending its progress reports on `stream`; a coordinator that went away
/// does not stop the build (its result is still recorded on this host).
/// Each report is also published in `state` for followers.
async fn forward_progress<T>(
    work: impl std::future::Future<Output = T>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<BuildProgress>,
    stream: &mut RequestStream,
    state: &tokio::sync::watch::Sender<BuildState>,
) -> T {
    tokio::pin!(work);
    let mut listening = true;
    let mut forward = async |p: BuildProgress| {
        state.send_replace(BuildState::Running(Some(p.clone())));
        if listening && stream.reply(&Reply::BuildProgress(p)).await.is_err() {
            listening = false;
        }
    };
    loop {
        tokio::select! {
            result = &mut work => {
                while let Ok(p) = rx.try_recv() {
                    forward(p).await;
                }
                return result;
            }
            Some(p) = rx.recv() => forward(p).await,
        }
    }
}

fn build_error(e: crate::build::BuildError) -> Reply {
    Reply::error(ErrorKind::Build, e.to_string())
}
