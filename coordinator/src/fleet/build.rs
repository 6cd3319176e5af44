//! `tightwad build`: one llama.cpp build across the cluster. Every chosen agent builds
//! llama-server, rpc-server and llama-quantize from the same source (a tarball this coordinator
//! uploads over the peer protocol, or a git ref the hosts fetch themselves) with its own GPU
//! backend, smoke-tests it, and only then switches its supervised processes to it; the previous
//! build stays for `--rollback`. Hosts build in parallel; a failed host does not stop the others,
//! and the summary says what to do about it.

use super::{Fleet, HostEntry};
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tightwad_protocol::messages::{
    BuildIdentity, BuildOutcome, BuildProgress, BuildRequest, BuildSource, BuildStage, Reply,
    Request, UploadOffer,
};
use tightwad_protocol::upload;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    tightwad build --source llama.cpp-b8111.tar.gz          # hosts without internet: the tarball travels over the peer protocol\n  \
    tightwad build --ref b8111                              # each host fetches the tag from GitHub\n  \
    tightwad build --ref b8111 --host gpu-box,desktop --json\n  \
    tightwad build --rollback                               # back to each host's previous build\n\
Per-host GPU backend: detected from the host (NVIDIA → cuda, AMD → hip, macOS → metal, Vulkan → vulkan, else cpu);\n\
override it with `build_backend = \"cpu\"` in that host's [[hosts]] table.")]
pub struct BuildArgs {
    /// A git ref (tag such as b8111, branch or commit) each host fetches from --git-url.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,
    /// The repository for --ref.
    #[arg(long, default_value = "https://github.com/ggml-org/llama.cpp")]
    pub git_url: String,
    /// A source tarball (.tar.gz of a llama.cpp tree, or of a package vendoring one in
    /// vendor/llama.cpp) sent to every host, or a git URL (then --ref is required).
    #[arg(long, value_name = "PATH_OR_URL")]
    pub source: Option<String>,
    /// Only these hosts (names from [[hosts]], comma-separated or repeated); default: all.
    #[arg(long = "host", value_delimiter = ',', value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Parallel compile jobs on each host (default: the host's setting or CPU count).
    #[arg(long)]
    pub jobs: Option<u32>,
    /// Switch each host back to the build it ran before the current one.
    #[arg(long, conflicts_with_all = ["git_ref", "source", "stock"])]
    pub rollback: bool,
    /// Build llama.cpp as it is, without Tightwad's bundled patches (then targets verify drafts
    /// with one prompt per position instead of one pass).
    #[arg(long)]
    pub stock: bool,
    /// Print the per-host results as JSON (no progress bars).
    #[arg(long)]
    pub json: bool,
}

/// Where the hosts get the source from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    Tarball(PathBuf),
    Git { url: String, git_ref: String },
}

#[derive(Debug, Clone)]
pub enum BuildPlan {
    /// Build the source with Tightwad's bundled llama.cpp patches ([`super::patches`]).
    Build(SourceSpec),
    /// Build the source as it is (`--stock`).
    Stock(SourceSpec),
    Rollback,
}

/// One host's result.
#[derive(Debug, Clone, Serialize)]
pub struct HostResult {
    pub host: String,
    pub ok: bool,
    /// The build the host now runs (after a successful build or rollback).
    pub identity: Option<BuildIdentity>,
    /// `identity` as one line (`b8111-abc1234 (cuda)`), what doctor compares.
    pub build: Option<String>,
    pub previous: Option<String>,
    pub switched: Vec<String>,
    pub smoke_test: Option<String>,
    pub reused: bool,
    pub seconds: f64,
    pub error: Option<String>,
    /// What to do about the error.
    pub advice: Option<String>,
}

impl HostResult {
    fn done(host: &str, outcome: BuildOutcome) -> Self {
        HostResult {
            host: host.to_string(),
            ok: true,
            build: Some(outcome.identity.to_string()),
            identity: Some(outcome.identity),
            previous: outcome.previous.map(|p| p.to_string()),
            switched: outcome.switched,
            smoke_test: Some(outcome.smoke_test),
            reused: outcome.reused,
            seconds: outcome.seconds,
            error: None,
            advice: None,
        }
    }

    fn failed(host: &str, error: &anyhow::Error) -> Self {
        let text = format!("{error:#}");
        HostResult {
            host: host.to_string(),
            ok: false,
            identity: None,
            build: None,
            previous: None,
            switched: Vec::new(),
            smoke_test: None,
            reused: false,
            seconds: 0.0,
            advice: Some(advice(&text)),
            error: Some(text),
        }
    }
}

/// The context of an error met while the host builds (its source already sent): the agent goes
/// on without us (`agent::service::build`), so the advice differs from a cut upload's.
const FOLLOWING: &str = "following the build";

/// What to do about a failed host, from its error.
pub fn advice(error: &str) -> String {
    let e = error.to_ascii_lowercase();
    if e.contains("smoke test failed") {
        "the new build did not pass its smoke test and was not switched to; the host keeps serving its current build. Check the source (or [build] smoke_model in the host's agent.toml), then run tightwad build again".into()
    } else if e.contains("cmake configure failed") {
        "the host lacks a build tool or GPU toolkit (see the hint above); install it, or set build_backend = \"cpu\" in its [[hosts]] table, then run tightwad build again for this host (--host NAME)".into()
    } else if e.contains("compile failed") {
        "the compiler failed; see the output above (the host keeps serving its current build). Try another --ref, or check the host's compiler and disk space".into()
    } else if e.contains("already running") {
        "a build is still running on this host; wait for it to finish and run tightwad build again"
            .into()
    } else if e.contains("nothing to roll back") {
        "this host has no previous build to return to".into()
    } else if e.contains("switching to the new build failed") {
        "a supervised process did not start on the new build; the host went back to its previous build. See `tightwad agent logs HOST NAME`".into()
    } else if e.contains(FOLLOWING)
        && !e.contains("receiving the source")
        && (e.contains("connection") || e.contains("stopped answering"))
    {
        "the link to the host was lost while it built; its agent goes on by itself (a new build is switched to only after its smoke test). Once it is done, run the command again: a finished build is reused, not compiled again (while it still builds, the host answers that a build is running)".into()
    } else if e.contains("receiving the source")
        || e.contains("connection")
        || e.contains("stopped answering")
    {
        "the host could not be reached or the upload was cut: check the agent and the network, then run tightwad build again (an interrupted upload resumes)".into()
    } else if e.contains("could not connect")
        || e.contains("not pinned")
        || e.contains("incompatible")
    {
        "start (or upgrade) tightwad-agent on the host and check [[hosts]] in the config, then run tightwad build again for this host".into()
    } else {
        "see the error; the host keeps serving its current build".into()
    }
}

/// Something that shows progress (the CLI's progress bars, or a test's log).
pub trait Observer: Sync {
    fn progress(&self, host: &str, progress: &BuildProgress);
}

impl<F: Fn(&str, &BuildProgress) + Sync> Observer for F {
    fn progress(&self, host: &str, progress: &BuildProgress) {
        self(host, progress)
    }
}

/// The tarball's name on the agents: its content hash, so the same tarball is recognised there
/// (and an upload cut off resumes) whatever it was called here.
fn tarball_offer_name(offer: &UploadOffer) -> String {
    format!(
        "llama-src-{}.tar.gz",
        &offer.sha256[..16.min(offer.sha256.len())]
    )
}

/// Runs `plan` on `hosts` in parallel; one result per host, in order.
pub async fn run_on_hosts(
    fleet: &Fleet,
    hosts: &[HostEntry],
    plan: &BuildPlan,
    jobs: Option<u32>,
    observer: &dyn Observer,
) -> anyhow::Result<Vec<HostResult>> {
    let offer = match plan {
        BuildPlan::Build(SourceSpec::Tarball(path))
        | BuildPlan::Stock(SourceSpec::Tarball(path)) => {
            anyhow::ensure!(
                path.is_file(),
                "source tarball {} does not exist",
                path.display()
            );
            let mut offer = upload::offer_for(path, "source.tar.gz")
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            offer.file_name = tarball_offer_name(&offer);
            Some(offer)
        }
        _ => None,
    };
    let work = hosts.iter().map(|host| {
        let offer = offer.clone();
        async move {
            match one_host(fleet, host, plan, offer, jobs, observer).await {
                Ok(outcome) => HostResult::done(&host.name, outcome),
                Err(e) => HostResult::failed(&host.name, &e),
            }
        }
    });
    Ok(futures::future::join_all(work).await)
}

async fn one_host(
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
        BuildPlan::Build(spec) | BuildPlan::Stock(spec) => {
            let patches = match plan {
                BuildPlan::Build(_) => super::patches::bundled(),
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
        let follows = client
            .peer_hello()
            .is_some_and(|h| h.negotiated_version >= tightwad_protocol::FOLLOW_BUILD_VERSION);
        if !follows {
            return Err(anyhow::Error::new(lost).context(format!("{}: {FOLLOWING}", host.name)));
        }
        observer.progress(
            &host.name,
            &BuildProgress {
                stage,
                done: 0,
                total: 0,
                message: format!("link lost ({lost}): reconnecting to follow the build"),
            },
        );
        (client, stream) = follow_again(fleet, host, lost).await?;
    }
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

fn stage_label(stage: BuildStage) -> &'static str {
    match stage {
        BuildStage::Upload => "upload",
        BuildStage::Unpack => "unpack",
        BuildStage::Configure => "cmake",
        BuildStage::Compile => "compile",
        BuildStage::SmokeTest => "smoke test",
        BuildStage::Switch => "switch",
    }
}

/// Progress bars, one per host (only drawn on a terminal); stage changes as plain lines
/// otherwise, so logs of a run without a terminal still show where each host is.
struct Bars {
    multi: indicatif::MultiProgress,
    bars: Vec<(String, indicatif::ProgressBar)>,
    last_stage: std::sync::Mutex<std::collections::HashMap<String, BuildStage>>,
    terminal: bool,
}

impl Bars {
    fn new(hosts: &[HostEntry], hidden: bool) -> Self {
        let terminal = !hidden && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = if terminal {
            indicatif::MultiProgress::new()
        } else {
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
        };
        let style = indicatif::ProgressStyle::with_template(
            "{prefix:>12.bold} {bar:30.cyan/blue} {pos:>5}/{len:5} {wide_msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let bars = hosts
            .iter()
            .map(|h| {
                let bar = multi.add(indicatif::ProgressBar::new(1));
                bar.set_style(style.clone());
                bar.set_prefix(h.name.clone());
                bar.set_message("connecting");
                (h.name.clone(), bar)
            })
            .collect();
        Bars {
            multi,
            bars,
            last_stage: Default::default(),
            terminal,
        }
    }
}

impl Observer for Bars {
    fn progress(&self, host: &str, p: &BuildProgress) {
        if let Some((_, bar)) = self.bars.iter().find(|(name, _)| name == host) {
            let (done, total) = match p.stage {
                // Bytes are shown in MiB.
                BuildStage::Upload => (p.done >> 20, (p.total >> 20).max(1)),
                _ => (p.done, p.total.max(1)),
            };
            bar.set_length(total);
            bar.set_position(done.min(total));
            bar.set_message(format!("{}: {}", stage_label(p.stage), p.message));
        }
        let changed = self
            .last_stage
            .lock()
            .map(|mut last| last.insert(host.to_string(), p.stage) != Some(p.stage))
            .unwrap_or(false);
        if !self.terminal
            && (changed || p.stage != BuildStage::Compile && p.stage != BuildStage::Upload)
        {
            eprintln!("[{host}] {}: {}", stage_label(p.stage), p.message);
        }
    }
}

/// Chooses the hosts: all, or those named (unknown names are an error naming the known ones).
pub fn choose_hosts(fleet: &Fleet, names: &[String]) -> anyhow::Result<Vec<HostEntry>> {
    if names.is_empty() {
        anyhow::ensure!(
            !fleet.config.hosts.is_empty(),
            "no [[hosts]] in the config: add the agents first (tightwad token, tightwad status)"
        );
        return Ok(fleet.config.hosts.clone());
    }
    names
        .iter()
        .map(|n| fleet.config.host(n).cloned())
        .collect()
}

/// The plan from the command line.
pub fn plan_from(args: &BuildArgs) -> anyhow::Result<BuildPlan> {
    if args.rollback {
        return Ok(BuildPlan::Rollback);
    }
    Ok(match source_from(args)? {
        spec if args.stock => BuildPlan::Stock(spec),
        spec => BuildPlan::Build(spec),
    })
}

/// Where the source comes from, by the flags.
fn source_from(args: &BuildArgs) -> anyhow::Result<SourceSpec> {
    match (&args.source, &args.git_ref) {
        (Some(source), git_ref) if looks_like_url(source) => {
            let git_ref = git_ref.clone().context(
                "--source with a git URL needs --ref (the tag, branch or commit to build)",
            )?;
            Ok(SourceSpec::Git {
                url: source.clone(),
                git_ref,
            })
        }
        (Some(_), Some(_)) => anyhow::bail!(
            "--ref goes with a git URL (--source https://...) or alone; a tarball is already one version"
        ),
        (Some(source), None) => Ok(SourceSpec::Tarball(PathBuf::from(source))),
        (None, Some(git_ref)) => Ok(SourceSpec::Git {
            url: args.git_url.clone(),
            git_ref: git_ref.clone(),
        }),
        (None, None) => anyhow::bail!(
            "say what to build: --ref REF (each host fetches it), --source TARBALL (sent to every host), or --rollback"
        ),
    }
}

fn looks_like_url(source: &str) -> bool {
    ["https://", "http://", "git://", "ssh://", "git@"]
        .iter()
        .any(|p| source.starts_with(p))
}

/// The summary for people.
pub fn render(results: &[HostResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.ok {
            out.push_str(&format!(
                "✓ {}: {}{} in {:.0}s; {}; switched: {}{}\n",
                r.host,
                r.build.as_deref().unwrap_or("?"),
                if r.reused { " (already built)" } else { "" },
                r.seconds,
                r.smoke_test.as_deref().unwrap_or(""),
                if r.switched.is_empty() {
                    "nothing running".to_string()
                } else {
                    r.switched.join(", ")
                },
                r.previous
                    .as_ref()
                    .map(|p| format!("; previous {p} kept for --rollback"))
                    .unwrap_or_default()
            ));
        } else {
            out.push_str(&format!(
                "✗ {}: {}\n    what to do: {}\n",
                r.host,
                r.error.as_deref().unwrap_or("failed"),
                r.advice.as_deref().unwrap_or("")
            ));
        }
    }
    let builds: std::collections::BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.identity.as_ref())
        .map(identity_key)
        .collect();
    let failed = results.iter().filter(|r| !r.ok).count();
    match (builds.len(), failed) {
        (1, 0) => out.push_str(&format!(
            "all {} host(s) run one llama.cpp build: {}\n",
            results.len(),
            builds.iter().next().map(String::as_str).unwrap_or("")
        )),
        (_, 0) => out.push_str(&format!(
            "the hosts run different llama.cpp builds: {}\n",
            builds.into_iter().collect::<Vec<_>>().join(", ")
        )),
        _ => out.push_str(&format!(
            "{failed} of {} host(s) failed (their current builds keep serving); fix them and run the same command with --host {}\n",
            results.len(),
            results.iter().filter(|r| !r.ok).map(|r| r.host.as_str()).collect::<Vec<_>>().join(",")
        )),
    }
    out
}

/// Version and commit, without the backend: hosts with different GPUs run "one build" when
/// these agree.
fn identity_key(identity: &BuildIdentity) -> String {
    let b = &identity.build;
    format!(
        "{}b{}-{}",
        b.version
            .as_ref()
            .map(|v| format!("{v} "))
            .unwrap_or_default(),
        b.build_number
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into()),
        b.commit.as_deref().unwrap_or("?")
    )
}

/// `tightwad build`.
pub async fn run(fleet: &Fleet, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let plan = plan_from(&args)?;
    let hosts = choose_hosts(fleet, &args.hosts)?;
    let bars = Bars::new(&hosts, args.json);
    let results = run_on_hosts(fleet, &hosts, &plan, args.jobs, &bars).await?;
    for (_, bar) in &bars.bars {
        bar.finish_and_clear();
    }
    let _ = bars.multi.clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", render(&results));
    }
    Ok(if results.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BuildArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            build: BuildArgs,
        }
        let mut argv = vec!["tightwad"];
        argv.extend(extra);
        <Cli as clap::Parser>::parse_from(argv).build
    }

    #[test]
    fn the_plan_follows_the_flags() {
        assert!(matches!(
            plan_from(&args(&["--rollback"])),
            Ok(BuildPlan::Rollback)
        ));
        match plan_from(&args(&["--ref", "b8111"])) {
            Ok(BuildPlan::Build(SourceSpec::Git { url, git_ref })) => {
                assert_eq!(git_ref, "b8111");
                assert!(url.contains("llama.cpp"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_from(&args(&["--source", "x.tar.gz"])),
            Ok(BuildPlan::Build(SourceSpec::Tarball(_)))
        ));
        assert!(matches!(
            plan_from(&args(&[
                "--source",
                "https://example.org/llama.cpp",
                "--ref",
                "b1"
            ])),
            Ok(BuildPlan::Build(SourceSpec::Git { .. }))
        ));
        assert!(plan_from(&args(&["--source", "x.tar.gz", "--ref", "b1"])).is_err());
        assert!(matches!(
            plan_from(&args(&["--source", "x.tar.gz", "--stock"])),
            Ok(BuildPlan::Stock(SourceSpec::Tarball(_)))
        ));
        let none = plan_from(&args(&[])).expect_err("nothing to build");
        assert!(none.to_string().contains("--ref"), "{none}");
        let url_without_ref =
            plan_from(&args(&["--source", "https://example.org/x"])).expect_err("needs a ref");
        assert!(url_without_ref.to_string().contains("--ref"));
    }

    #[test]
    fn advice_names_the_next_step() {
        assert!(advice("Build: smoke test failed: llama-server exited").contains("keeps serving"));
        assert!(advice("Build: cmake configure failed: nvcc").contains("build_backend"));
        assert!(advice("could not connect to 10.0.0.2:7420: timed out").contains("agent"));
        // The CI run where both agents' links dropped right after their compile said "the upload
        // was cut", although the agents had the source and built on.
        let lost = advice("beta: following the build: connection lost: reset by peer");
        assert!(lost.contains("goes on by itself") && lost.contains("reused"));
        let busy = advice("beta: following the build: remote: another build is already running");
        assert!(busy.contains("wait for it"));
        assert!(advice("beta: sending the source tarball: connection lost").contains("upload"));
    }
}
