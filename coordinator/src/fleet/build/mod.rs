//! `tightwad build`: one llama.cpp build across the cluster. Every chosen agent builds
//! llama-server, rpc-server and llama-quantize from the same source (a tarball this coordinator
//! uploads over the peer protocol, or a git ref the hosts fetch themselves) with its own GPU
//! backend, smoke-tests it, and only then switches its supervised processes to it; the previous
//! build stays for `--rollback`. Hosts build in parallel; a failed host does not stop the others,
//! and the summary says what to do about it.

mod host;
mod render;

use super::{Fleet, HostEntry};
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use tightwad_protocol::messages::{BuildIdentity, BuildOutcome, BuildProgress, BuildStage};
use tightwad_protocol::upload;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    tightwad build --source llama.cpp-b8111.tar.gz          # hosts without internet: the tarball travels over the peer protocol\n  \
    tightwad build --ref b8111                              # each host fetches the tag from GitHub\n  \
    tightwad build --ref b8111 --host gpu-box,desktop --json\n  \
    tightwad build --rollback                               # back to each host's previous build\n  \
    tightwad build --follow                                 # the builds a stopped `tightwad build` left running\n\
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
    /// Follow the builds already running on the hosts to their end (or hear how each host's last
    /// one ended): after the `tightwad build` that started them was stopped or lost its link.
    #[arg(long, conflicts_with_all = ["git_ref", "source", "stock", "rollback", "jobs"])]
    pub follow: bool,
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
    /// Follow what the hosts are building (`--follow`).
    Follow,
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
    } else if e.contains("no build has run on this host") {
        "nothing to follow there: no build has run on this host since its agent started; `tightwad status` shows the build it serves".into()
    } else if e.contains("needs peer protocol v") {
        "upgrade tightwad-agent on the host (the same Tightwad version as here), or wait for its build and run tightwad status".into()
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

    /// Something that happened to a host's build besides its progress (the link lost and
    /// followed again): by default a progress report with no position.
    fn notice(&self, host: &str, stage: BuildStage, message: &str) {
        self.progress(
            host,
            &BuildProgress {
                stage,
                done: 0,
                total: 0,
                message: message.to_string(),
            },
        );
    }
}

impl<F: Fn(&str, &BuildProgress) + Sync> Observer for F {
    fn progress(&self, host: &str, progress: &BuildProgress) {
        self(host, progress)
    }
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
            offer.file_name = host::tarball_offer_name(&offer);
            Some(offer)
        }
        _ => None,
    };
    let work = hosts.iter().map(|host| {
        let offer = offer.clone();
        async move {
            match host::one_host(fleet, host, plan, offer, jobs, observer).await {
                Ok(outcome) => HostResult::done(&host.name, outcome),
                Err(e) => HostResult::failed(&host.name, &e),
            }
        }
    });
    Ok(futures::future::join_all(work).await)
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
    if args.follow {
        return Ok(BuildPlan::Follow);
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
            "say what to build: --ref REF (each host fetches it), --source TARBALL (sent to every host), --rollback, or --follow (the builds already running)"
        ),
    }
}

fn looks_like_url(source: &str) -> bool {
    ["https://", "http://", "git://", "ssh://", "git@"]
        .iter()
        .any(|p| source.starts_with(p))
}

/// `tightwad build`.
pub async fn run(fleet: &Fleet, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let plan = plan_from(&args)?;
    let hosts = choose_hosts(fleet, &args.hosts)?;
    let bars = render::Bars::new(&hosts, args.json);
    let results = run_on_hosts(fleet, &hosts, &plan, args.jobs, &bars).await?;
    for (_, bar) in &bars.bars {
        bar.finish_and_clear();
    }
    let _ = bars.multi.clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", render::render(&results));
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
        assert!(matches!(
            plan_from(&args(&["--follow"])),
            Ok(BuildPlan::Follow)
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
