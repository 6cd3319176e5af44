//! `tightwad doctor` against real agents in network namespaces, each check made to fail for real:
//! two real llama.cpp builds (another build number) in one RPC pool, a model file in another
//! folder or on another host, a flag the build does not accept, a model larger than the memory
//! limit of the cgroup an agent runs in, a MoE model pooled onto a real rpc-server with too
//! little memory, a draft with another vocabulary, an unreachable host. A healthy cluster passes.
//!
//! Lives in the harness crate, not beside the coordinator: it drives coordinator code against real
//! `tightwad-agent` processes (the agent binary) in network namespaces, which is what this crate
//! starts (a coordinator test using it would make a dev-dependency cycle).

use tightwad_e2e::agents::*;
use tightwad_e2e::cluster::*;
use tightwad_e2e::test_env::*;

use tightwad_coordinator::{doctor, fleet, init};

use doctor::{Category, Check, DoctorArgs, Report, Status};

/// The exit code `tightwad doctor` gives (the whole command, JSON output included).
pub fn doctor_exit_code(cluster: &TestCluster, offline: bool) -> std::process::ExitCode {
    let args = DoctorArgs {
        json: true,
        offline,
    };
    cluster
        .rt
        .block_on(doctor::run(args, &cluster.config))
        .expect("doctor runs")
}

/// The one check of `category` about `subject` with `status`; panics with the report otherwise.
pub fn find<'a>(
    report: &'a Report,
    category: Category,
    subject: &str,
    status: Status,
) -> &'a Check {
    report
        .checks
        .iter()
        .find(|c| c.category == category && c.subject == subject && c.status == status)
        .unwrap_or_else(|| {
            panic!(
                "no {status:?} {category:?} check for {subject:?}:\n{}",
                report.render()
            )
        })
}

/// alpha runs the target (`target.gguf`, port 8080), beta a draft of `draft_model` (port 8081),
/// and the layout pairs them as `pair`.
fn target_and_draft(draft_model: &str) -> ClusterPlan {
    ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .llama_server(
            "target",
            "{models}/target.gguf",
            8080,
            r#", "-np", "6", "--kv-unified", "--spec-draft-n-max", "8""#,
        )
        .host("beta")
        .models(&[draft_model])
        .llama_server("draft", &format!("{{models}}/{draft_model}"), 8081, "")
        .layout(
            r#"
[[pairings]]
name = "pair"
target = "http://{ip:alpha}:8080"
draft = "http://{ip:beta}:8081"
draft_tokens = 4
"#,
        )
        .role("alpha", "target", "target")
        .role("beta", "draft", "draft")
}

/// alpha alone, running `target` (`target.gguf` on port 8080, `extra` flags) as the layout's
/// target.
fn lone_target(extra: &str) -> TestCluster {
    ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .llama_server("target", "{models}/target.gguf", 8080, extra)
        .role("alpha", "target", "target")
        .start()
}

#[test]
fn a_healthy_cluster_passes_every_check() {
    let cluster = target_and_draft("draft.gguf").start();
    cluster.start_process("alpha", "target");
    cluster.start_process("beta", "draft");
    let report = cluster.doctor(false);
    for check in &report.checks {
        // The payoff is a prediction, not a fault: on these 2-core CPU machines multi-prompt
        // verification rightly predicts a loss (README: "Performance"), which is a warning.
        if check.category == Category::Payoff {
            assert!(
                matches!(check.status, Status::Pass | Status::Warn),
                "{check:?}"
            );
            if let Some(speedup) = check.details["predicted_speedup"].as_f64() {
                assert!(check.message.contains("predicted"), "{check:?}");
                assert!(speedup > 0.0 && speedup < 20.0, "{check:?}");
            } else {
                // From model sizes: draft and target are the same size here, ratio 1.
                let ratio = check.details["cost_ratio"].as_f64().expect("cost ratio");
                assert!((ratio - 1.0).abs() < 0.01, "{check:?}");
            }
            continue;
        }
        assert_eq!(check.status, Status::Pass, "{}", report.render());
    }
    for category in [
        Category::Host,
        Category::Build,
        Category::Model,
        Category::Flags,
        Category::Memory,
        Category::Vocabulary,
        Category::Slots,
        Category::Network,
        Category::Payoff,
        Category::Layout,
    ] {
        assert!(
            report.checks.iter().any(|c| c.category == category),
            "no {category:?} check:\n{}",
            report.render()
        );
    }
    assert!(
        report.checks.iter().any(|c| c.category == Category::Build
            && c.message.contains("one-pass verification available")),
        "the patched target's one-pass verification is reported:\n{}",
        report.render()
    );
    assert!(report.ok);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::SUCCESS
    );
}

#[test]
fn different_builds_in_an_rpc_pool_fail() {
    // Two REAL builds of the pinned source: beta's llama-server was built with another build
    // number (scripts/setup: LLAMA_BUILD_NUMBER=8079, the field report's oldest host), alpha's
    // is the usual one. Each agent asks its own binary `--version`.
    let other = std::path::PathBuf::from(require_env("LLAMA_SERVER_OTHER_BUILD"));
    let rpc = std::path::PathBuf::from(require_env("RPC_SERVER"));
    let cluster = ClusterPlan::target_and_rpc_worker("{models}/target.gguf", "")
        .host("alpha")
        .models(&["target.gguf"])
        .host("beta")
        .binaries(other, rpc)
        .pool("big", "alpha/target", &["beta/rpc"])
        .start();
    let report = cluster.doctor(true);
    let build = find(&report, Category::Build, "pool big", Status::Fail);
    // Same source, same RPC protocol: only the build number differs, and that is enough.
    assert!(build.message.contains("b8079-0c1e570"), "{build:?}");
    let alpha_build = build.details[0]["llama_build"].as_str().expect("alpha");
    let beta_build = build.details[1]["llama_build"].as_str().expect("beta");
    assert!(beta_build.ends_with("b8079-0c1e570"), "{build:?}");
    assert_ne!(alpha_build, beta_build, "{build:?}");
    assert_eq!(
        build.details[0]["rpc_protocol"], build.details[1]["rpc_protocol"],
        "{build:?}"
    );
    assert!(
        build
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("same llama.cpp")),
        "{build:?}"
    );
    assert!(!report.ok);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
    // `tightwad up` runs the same checks first and starts nothing.
    let refused = cluster
        .rt
        .block_on(fleet::run(
            fleet::FleetCommand::Up {
                name: None,
                skip_doctor: false,
                json: false,
            },
            &cluster.config,
        ))
        .expect_err("up refuses a pool of two builds");
    assert!(
        refused.to_string().contains("doctor found 1 problem"),
        "{refused:#}"
    );
    let status = cluster
        .rt
        .block_on(fleet::status::collect(&cluster.fleet(), Some("beta")))
        .expect("status");
    let worker = status[0].status.as_ref().expect("beta status");
    assert!(
        worker.processes.iter().all(|p| p.pid.is_none()),
        "nothing started: {:?}",
        worker.processes
    );
}

#[test]
fn a_model_in_another_folder_or_on_another_host_is_found() {
    // alpha's target points at a folder the file is not in (the field report's ~/models vs
    // ~/.tightwad/models); its draft names a file only beta has.
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .llama_server("target", "/srv/elsewhere/target.gguf", 8080, "")
        .llama_server("draft", "{models}/draft-identical.gguf", 8081, "")
        .host("beta")
        .models(&["draft-identical.gguf"])
        .role("alpha", "target", "target")
        .role("alpha", "draft", "draft")
        .start();
    let report = cluster.doctor(true);
    let here = find(&report, Category::Model, "alpha/target", Status::Fail);
    assert!(
        here.message
            .contains("/srv/elsewhere/target.gguf: no such file on alpha"),
        "{here:?}"
    );
    let real = cluster.host("alpha").models.join("target.gguf");
    assert!(
        here.hint
            .as_deref()
            .is_some_and(|h| h.contains(&real.display().to_string())),
        "{here:?}"
    );
    let there = find(&report, Category::Model, "alpha/draft", Status::Fail);
    assert!(
        there.hint.as_deref().is_some_and(
            |h| h.contains("tightwad models copy draft-identical.gguf --from beta --to alpha")
        ),
        "{there:?}"
    );
    assert!(!report.ok);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
}

#[test]
fn a_flag_the_build_does_not_accept_fails_with_its_help() {
    let cluster = lone_target(r#", "--np", "1""#);
    let report = cluster.doctor(true);
    let flags = find(&report, Category::Flags, "alpha/target", Status::Fail);
    assert!(flags.message.contains("\"--np\""), "{flags:?}");
    assert!(flags.message.contains("did you mean \"-np\""), "{flags:?}");
    assert!(
        flags
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("alpha's agent config")),
        "{flags:?}"
    );
    // The model itself is fine: only the flag fails.
    find(&report, Category::Model, "alpha/target", Status::Pass);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
}

#[test]
fn a_model_larger_than_the_agents_memory_limit_fails() {
    // target.gguf is ~80 MB; alpha's agent runs in a cgroup limited to 64 MiB (as systemd's
    // MemoryMax= would hold it), so its servers can never load it. Nothing in its config says so.
    let cluster = lone_target("");
    let _small = cluster.limit_memory("alpha", 64 << 20);
    let report = cluster.doctor(true);
    let memory = find(&report, Category::Memory, "alpha", Status::Fail);
    assert!(memory.message.contains("does not fit"), "{memory:?}");
    assert!(memory.message.contains("of 64 MiB RAM"), "{memory:?}");
    assert_eq!(
        memory.details["ram_total_bytes"].as_u64(),
        Some(64 << 20),
        "the agent reports its cgroup's limit as its RAM: {memory:?}"
    );
    assert!(
        memory
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("smaller quantization")),
        "{memory:?}"
    );
    let need = memory.details["need_bytes"].as_u64().expect("need");
    assert!(need > 70_000_000, "weights + KV estimate: {need}");
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
}

#[test]
fn a_moe_model_on_a_small_rpc_worker_is_flagged_before_anything_starts() {
    // The field report's first failure: a MoE model pooled over llama.cpp RPC with a worker
    // whose rpc-server has far less memory than its share of the experts. Here the worker's
    // agent and its REAL rpc-server run in a cgroup limited to 32 MiB (the memory that
    // rpc-server has), and the coordinator's MoE model is ~53 MB, all of it offloaded to RPC.
    let moe = require_env("TIGHTWAD_MOE_MODEL");
    let cluster = ClusterPlan::target_and_rpc_worker(&moe, r#", "-ngl", "99""#)
        .pool("moe", "alpha/target", &["beta/rpc"])
        .start();
    let _small = cluster.limit_memory("beta", 32 << 20);
    cluster.start_process("beta", "rpc");
    let report = cluster.doctor(true);
    let note = report
        .checks
        .iter()
        .find(|c| {
            c.category == Category::Memory
                && c.subject == "beta"
                && c.status == Status::Warn
                && c.message.contains("MoE model")
        })
        .unwrap_or_else(|| panic!("no MoE-on-RPC warning for beta:\n{}", report.render()));
    let beta_ip = &cluster.host("beta").ns.ip;
    assert!(
        note.message.contains(&format!("on RPC0[{beta_ip}:50052]")),
        "{note:?}"
    );
    assert!(note.message.contains("but it has 32 MiB"), "{note:?}");
    let fail = find(&report, Category::Memory, "beta", Status::Fail);
    assert!(fail.message.contains("RPC buffers do not fit"), "{fail:?}");
    assert!(
        fail.hint
            .as_deref()
            .is_some_and(|h| h.contains("cannot spill into system RAM")),
        "{fail:?}"
    );
    assert!(!report.ok);
    // `tightwad up` runs the same checks and starts no coordinator on top of that worker.
    let refused = cluster
        .rt
        .block_on(fleet::run(
            fleet::FleetCommand::Up {
                name: None,
                skip_doctor: false,
                json: false,
            },
            &cluster.config,
        ))
        .expect_err("up refuses the pool");
    assert!(refused.to_string().contains("doctor found"), "{refused:#}");
}

#[test]
fn a_draft_with_another_vocabulary_fails_in_metadata_and_live() {
    let cluster = target_and_draft("draft-othervocab.gguf").start();
    cluster.start_process("alpha", "target");
    cluster.start_process("beta", "draft");
    let report = cluster.doctor(false);
    let checks: Vec<&Check> = report
        .checks
        .iter()
        .filter(|c| {
            c.category == Category::Vocabulary
                && c.subject == "pairing pair"
                && c.status == Status::Fail
        })
        .collect();
    assert_eq!(checks.len(), 2, "metadata and probe:\n{}", report.render());
    assert!(
        checks[0].message.contains("token list fingerprint"),
        "{:?}",
        checks[0]
    );
    assert!(
        checks[1].message.contains("tokenize differently"),
        "{:?}",
        checks[1]
    );
    assert!(checks.iter().all(|c| c
        .hint
        .as_deref()
        .is_some_and(|h| h.contains("same model family"))));
    // No payoff prediction for a pair that cannot speculate.
    assert!(!report.checks.iter().any(|c| c.category == Category::Payoff));
    assert!(!report.ok);
}

#[test]
fn an_unreachable_host_fails_with_how_to_fix_it() {
    let cluster = ClusterPlan::new().host("alpha").start();
    // A second host whose agent is not running: the address answers nothing.
    let ghost = format!(
        "{}.99:7420",
        cluster.host("alpha").ns.ip.rsplit_once('.').expect("ip").0
    );
    let mut text = std::fs::read_to_string(&cluster.config).expect("config");
    text = text.replacen(
        "[[hosts]]",
        &format!("[[hosts]]\nname = \"ghost\"\naddress = \"{ghost}\"\n\n[[hosts]]"),
        1,
    );
    std::fs::write(&cluster.config, text).expect("config");
    // Enrollment is possible (a token is pending), so only the network can fail.
    issue_token(&cluster.fleet());
    let report = cluster.doctor(true);
    let host = find(&report, Category::Host, "ghost", Status::Fail);
    assert!(host.message.contains("unreachable"), "{host:?}");
    assert!(
        host.hint
            .as_deref()
            .is_some_and(|h| h.contains("start `tightwad-agent` on ghost")),
        "{host:?}"
    );
    find(&report, Category::Host, "alpha", Status::Pass);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
}

#[test]
fn init_proposes_a_pairing_from_the_agents_inventories_and_doctor_accepts_it() {
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["bench-target.gguf"])
        .host("beta")
        .models(&["bench-draft.gguf", "draft-othervocab.gguf"])
        .start();
    let fleet = cluster.fleet();
    let out = cluster.lab.dir.path().join("init.toml");
    let args = init::InitArgs {
        hosts: fleet
            .config
            .hosts
            .iter()
            .map(|h| format!("{}={}", h.name, h.address))
            .collect(),
        from_agents: true,
        state_dir: Some(fleet.config.state_dir()),
        ..Default::default()
    };
    cluster
        .rt
        .block_on(init::run(args.clone(), &out))
        .expect("init writes the config");
    let text = std::fs::read_to_string(&out).expect("config written");
    eprintln!("{text}");
    let layout = tightwad_coordinator::cluster::layout::Layout::parse(&text).expect("layout");
    assert_eq!(layout.pairings.len(), 1, "{text}");
    let alpha_ip = &cluster.host("alpha").ns.ip;
    assert_eq!(layout.pairings[0].target, format!("http://{alpha_ip}:8080"));
    assert!(text.contains("bench-target.gguf"), "{text}");
    assert!(text.contains("bench-draft.gguf"), "{text}");
    assert!(!text.contains("draft-othervocab"), "{text}");
    // Never overwritten without --force; replaced with it.
    let again = cluster.rt.block_on(init::run(args.clone(), &out));
    assert!(again.is_err());
    assert_eq!(std::fs::read_to_string(&out).expect("kept"), text);
    let forced = init::InitArgs {
        force: true,
        ..args
    };
    cluster
        .rt
        .block_on(init::run(forced, &out))
        .expect("--force replaces it");
    // The written config is one doctor reads: hosts reachable with the same identity.
    let report = cluster
        .rt
        .block_on(doctor::diagnose(
            &DoctorArgs {
                json: false,
                offline: true,
            },
            &out,
        ))
        .expect("doctor on the written config");
    eprintln!("{}", report.render());
    find(&report, Category::Host, "alpha", Status::Pass);
    find(&report, Category::Host, "beta", Status::Pass);
}

#[test]
fn a_pairing_url_that_misses_its_process_fails() {
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .llama_server("target", "{models}/target.gguf", 8080, "")
        .agent_toml(
            "[[process]]\nname = \"rpc\"\nkind = \"rpc-server\"\nargs = [\"-p\", \"50052\"]\n",
        )
        .layout("\n[[pairings]]\nname = \"pair\"\ntarget = \"http://{ip:alpha}:9090\"\n")
        .role("alpha", "target", "target")
        .pool("upside-down", "alpha/rpc", &["alpha/target"])
        .start();
    let report = cluster.doctor(true);
    let url = find(&report, Category::Layout, "pairing pair", Status::Fail);
    assert!(
        url.message.contains("alpha/target listens on port 8080"),
        "{url:?}"
    );
    let kind = find(&report, Category::Layout, "alpha/rpc", Status::Fail);
    assert!(
        kind.message
            .contains("a pool coordinator must be a llama-server, but alpha/rpc is an rpc-server"),
        "{kind:?}"
    );
    assert!(!report.ok);
}

#[test]
fn an_agent_of_another_protocol_version_fails_with_how_to_fix_it() {
    // beta plays an agent of a later Tightwad release.
    let cluster = ClusterPlan::new()
        .host("alpha")
        .host("beta")
        .agent_toml("[testing_protocol]\nversion = 99\n")
        .start();
    let report = cluster.doctor(true);
    let host = find(&report, Category::Host, "beta", Status::Fail);
    assert!(
        host.message.contains("incompatible peer protocol"),
        "{host:?}"
    );
    assert!(
        host.hint
            .as_deref()
            .is_some_and(|h| h.contains("install the same Tightwad version on beta")),
        "{host:?}"
    );
    find(&report, Category::Host, "alpha", Status::Pass);
    assert_eq!(
        doctor_exit_code(&cluster, true),
        std::process::ExitCode::FAILURE
    );
}
