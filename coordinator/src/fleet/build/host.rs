//! One host's side of `tightwad build`: the request, the source's upload, the progress reports
//! until the outcome, and, where the link drops while the host builds, reconnecting to follow the
//! build again (`Request::FollowBuild`).

use super::{BuildPlan, Observer, SourceSpec, FOLLOWING};
use crate::fleet::{Fleet, HostEntry};
use anyhow::Context;
use tightwad_protocol::messages::{
    BuildOutcome, BuildProgress, BuildRequest, BuildSource, BuildStage, Reply, Request, UploadOffer,
};
use tightwad_protocol::upload;

/// The tarball's name on the agents: its content hash, so the same tarball is recognised there
/// (and an upload cut off resumes) whatever it was called here.
pub(super) fn tarball_offer_name(offer: &UploadOffer) -> String {
    format!(
        "llama-src-{}.tar.gz",
        &offer.sha256[..16.min(offer.sha256.len())]
    )
}

pub(super) async fn one_host(
    fleet: &Fleet,
    host: &HostEntry,
    plan: &BuildPlan,
    offer: Option<UploadOffer>,
    jobs: Option<u32>,
    observer: &dyn Observer,
) -> anyhow::Result<BuildOutcome> {
    let client = fleet.connect(host).await?;
    let (request, tarball) = match plan {
        BuildPlan::Rollback => (Request::RollbackBuild, None),
        BuildPlan::Follow => {
            anyhow::ensure!(
                follows(&client),
                "{}: following a build needs peer protocol v{} (the agent speaks v{})",
                host.name,
                tightwad_protocol::FOLLOW_BUILD_VERSION,
                negotiated_version(&client)
            );
            (Request::FollowBuild, None)
        }
        BuildPlan::Build(spec) | BuildPlan::Stock(spec) => {
            let patches = match plan {
                BuildPlan::Build(_) => crate::fleet::patches::bundled(),
                _ => Vec::new(),
            };
            let source = match (spec, &offer) {
                (SourceSpec::Tarball(path), Some(offer)) => {
                    (BuildSource::Tarball(offer.clone()), Some(path.clone()))
                }
                (SourceSpec::Git { url, git_ref }, _) => (
                    BuildSource::Git {
                        url: url.clone(),
                        git_ref: git_ref.clone(),
                    },
                    None,
                ),
                (SourceSpec::Tarball(_), None) => anyhow::bail!("no offer for the tarball"),
            };
            (
                Request::Build(BuildRequest {
                    source: source.0,
                    backend: host.build_backend,
                    jobs,
                    patches,
                }),
                source.1,
            )
        }
    };
    let mut stream = client.open(&request).await?;
    if let (Some(path), Some(offer)) = (tarball, &offer) {
        upload::push(&mut stream, &path, offer, None, |p| {
            observer.progress(
                &host.name,
                &BuildProgress {
                    stage: BuildStage::Upload,
                    done: p.done,
                    total: p.total,
                    message: if p.resumed_from > 0 {
                        format!(
                            "uploading the source (resumed at {} MiB)",
                            p.resumed_from >> 20
                        )
                    } else {
                        "uploading the source".into()
                    },
                },
            )
        })
        .await
        .map_err(|e| client.explain(e))
        .with_context(|| format!("{}: sending the source tarball", host.name))?;
    }
    stream.finish().map_err(|e| client.explain(e))?;
    let (mut client, mut stream) = (client, stream);
    let mut stage = BuildStage::Upload;
    loop {
        let lost = match next_outcome(&client, &mut stream, host, observer, &mut stage).await {
            Ok(outcome) => return Ok(outcome),
            Err(Waiting::Failed(e)) => return Err(e),
            Err(Waiting::LinkLost(e)) => e,
        };
        if !follows(&client) {
            return Err(anyhow::Error::new(lost).context(format!("{}: {FOLLOWING}", host.name)));
        }
        observer.notice(
            &host.name,
            stage,
            &format!("link lost ({lost}): reconnecting to follow the build"),
        );
        (client, stream) = follow_again(fleet, host, lost).await?;
    }
}

/// The peer protocol version this connection speaks (0 before a Hello).
fn negotiated_version(client: &tightwad_protocol::client::Client) -> u32 {
    client.peer_hello().map_or(0, |h| h.negotiated_version)
}

/// Whether the agent at the other end can be asked to follow a build (`Request::FollowBuild`).
fn follows(client: &tightwad_protocol::client::Client) -> bool {
    negotiated_version(client) >= tightwad_protocol::FOLLOW_BUILD_VERSION
}

/// How waiting for a host's build ended, short of its outcome.
enum Waiting {
    /// The link dropped (the agent builds on without us).
    LinkLost(tightwad_protocol::ProtocolError),
    /// The build failed, or the agent broke the protocol.
    Failed(anyhow::Error),
}

/// Reads the build's progress reports until its outcome (`stage` keeps the latest stage).
async fn next_outcome(
    client: &tightwad_protocol::client::Client,
    stream: &mut tightwad_protocol::client::FramedStream,
    host: &HostEntry,
    observer: &dyn Observer,
    stage: &mut BuildStage,
) -> Result<BuildOutcome, Waiting> {
    use tightwad_protocol::ProtocolError as E;
    let failed =
        |e: anyhow::Error| Waiting::Failed(e.context(format!("{}: {FOLLOWING}", host.name)));
    loop {
        match stream.next_reply().await.map_err(|e| client.explain(e)) {
            Ok(Some(Reply::BuildProgress(p))) => {
                *stage = p.stage;
                observer.progress(&host.name, &p);
            }
            Ok(Some(Reply::BuildDone(outcome))) => return Ok(*outcome),
            Ok(Some(other)) => {
                return Err(failed(anyhow::anyhow!("unexpected reply {}", other.kind())))
            }
            Ok(None) => {
                return Err(failed(anyhow::anyhow!(
                    "the agent ended the build without a result"
                )))
            }
            Err(
                e @ (E::Connection(_)
                | E::PeerSilent { .. }
                | E::Read(_)
                | E::Write(_)
                | E::Closed(_)),
            ) => return Err(Waiting::LinkLost(e)),
            Err(e) => return Err(failed(e.into())),
        }
    }
}

/// How long a coordinator that lost its link to a building host keeps trying to reach it again.
const FOLLOW_AGAIN_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Reconnects to `host` and follows its build (`Request::FollowBuild`), trying again every few
/// seconds for [`FOLLOW_AGAIN_FOR`]; the error says the link was lost and what the last try met.
async fn follow_again(
    fleet: &Fleet,
    host: &HostEntry,
    lost: tightwad_protocol::ProtocolError,
) -> anyhow::Result<(
    tightwad_protocol::client::Client,
    tightwad_protocol::client::FramedStream,
)> {
    let deadline = tokio::time::Instant::now() + FOLLOW_AGAIN_FOR;
    loop {
        let attempt = async {
            let client = fleet.connect(host).await?;
            let mut stream = client.open(&Request::FollowBuild).await?;
            stream.finish().map_err(|e| client.explain(e))?;
            anyhow::Ok((client, stream))
        };
        match attempt.await {
            Ok(followed) => {
                tracing::info!(host = %host.name, "reconnected: following the build again");
                return Ok(followed);
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "{}: {FOLLOWING}: the link was lost ({lost}) and the host did not answer again within {} s",
                    host.name,
                    FOLLOW_AGAIN_FOR.as_secs()
                )))
            }
            Err(e) => {
                tracing::debug!(host = %host.name, error = %format!("{e:#}"), "not reachable yet");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}
