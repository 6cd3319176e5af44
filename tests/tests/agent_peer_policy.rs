//! An agent's `[peer]` policy against a real coordinator: the coordinator's key runs code on every
//! agent it enrolled (any llama-server flag, any file as a model, `tightwad build`), so an agent
//! can narrow what a peer may ask. Forbidden flags, model paths outside the model folders (by
//! `..` or by symlink) and builds when they are off are refused where the request arrives, with
//! the fix and the file to make it in, through the `tightwad` CLI as a user sees it; allowed
//! starts still run; and `tightwad doctor` reports what `tightwad up` would be refused.
//!
//! Real agents in network namespaces and the real `tightwad` binary (`cargo build --workspace
//! --bins` first).

use std::path::Path;
use std::process::{Command, Output};

use tightwad_e2e::cluster::*;
use tightwad_e2e::test_env::*;

fn tightwad(config: &Path, args: &[&str]) -> Output {
    Command::new(workspace_binary("tightwad", "TIGHTWAD_BIN"))
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("tightwad runs")
}

/// `tightwad ARGS` must fail, and say `needles` on stderr.
fn refused(config: &Path, args: &[&str], needles: &[&str]) {
    let out = tightwad(config, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "tightwad {args:?} succeeded:\n{stdout}\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle) || stdout.contains(needle),
            "tightwad {args:?} does not say {needle:?}:\n{stdout}\n{stderr}"
        );
    }
}

fn start_args(model: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "-m",
        model,
        "--host",
        "0.0.0.0",
        "--port",
        "8080",
        "-t",
        "1",
        "--cache-ram",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn a_peer_is_held_to_the_agents_flags_model_folders_and_build_setting() {
    let target = format!(
        "[[process]]\nname = \"target\"\nkind = \"llama-server\"\nargs = {}\n\n[peer]\nallow_build = false\n",
        llama_args("{models}/target.gguf", 8080, "")
    );
    let cluster = TestCluster::start(
        &[HostPlan {
            name: "alpha",
            models: &["target.gguf"],
            agent_toml: &target,
            binaries: None,
        }],
        "",
    );
    let host = cluster.host("alpha");
    let agent_config = host
        .agent
        .state_dir
        .with_extension("toml")
        .display()
        .to_string();
    let config = &cluster.config;
    let inside = host.models.join("target.gguf");
    let inside = inside.display().to_string();

    // A flag that writes any file the agent can: refused, nothing written.
    let written = cluster.lab.dir.path().join("written-by-a-peer.log");
    let mut args = vec!["agent", "start", "alpha", "target", "--"];
    let log_args = start_args(&inside, &["--log-file", &written.display().to_string()]);
    args.extend(log_args.iter().map(String::as_str));
    refused(
        config,
        &args,
        &[
            "refused by this agent's [peer] policy: target: a peer may not pass --log-file",
            &format!("remove \"--log-file\" from deny_flags under [peer] in {agent_config}"),
        ],
    );
    assert!(!written.exists(), "the refused flag still acted");

    // A model outside the model folders: by its own path, through `..`, through a symlink.
    let elsewhere = cluster.lab.path("elsewhere");
    std::fs::copy(&inside, elsewhere.join("target.gguf")).expect("copy");
    let link = host.models.join("linked.gguf");
    std::os::unix::fs::symlink(elsewhere.join("target.gguf"), &link).expect("symlink");
    let outside: Vec<String> = vec![
        elsewhere.join("target.gguf").display().to_string(),
        format!("{}/../elsewhere/target.gguf", host.models.display()),
        link.display().to_string(),
    ];
    for model in &outside {
        let mut args = vec!["agent", "start", "alpha", "target", "--"];
        let model_args = start_args(model, &[]);
        args.extend(model_args.iter().map(String::as_str));
        refused(
            config,
            &args,
            &[
                &format!("-m {model} is not a file inside the model folders"),
                &format!("set confine_model_paths = false under [peer] in {agent_config}"),
            ],
        );
    }

    // `tightwad build` is off on this agent: refused before anything is uploaded or compiled.
    refused(
        config,
        &[
            "build",
            "--source",
            &require_env("TIGHTWAD_LLAMA_SOURCE"),
            "--hosts",
            "alpha",
        ],
        &[
            "tightwad build is turned off on this agent",
            &format!("set allow_build = true under [peer] in {agent_config}"),
        ],
    );

    // Nothing was started by any of that.
    let status = cluster
        .rt
        .block_on(tightwad_coordinator::fleet::status::collect(
            &cluster.fleet(),
            Some("alpha"),
        ))
        .expect("status");
    let alpha = status[0].status.as_ref().expect("alpha status");
    assert!(
        alpha.processes.iter().all(|p| p.pid.is_none()),
        "{:?}",
        alpha.processes
    );

    // Allowed: other values for flags, a model inside the folders. It starts and answers.
    let mut args = vec!["agent", "start", "alpha", "target", "--"];
    let ok_args = start_args(&inside, &["-c", "512"]);
    args.extend(ok_args.iter().map(String::as_str));
    let out = tightwad(config, &args);
    assert!(
        out.status.success(),
        "an allowed start failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health = cluster.rt.block_on(async {
        reqwest::get(format!("http://{}:8080/health", host.ns.ip))
            .await
            .expect("the started server answers")
            .status()
    });
    assert!(health.is_success(), "{health}");
}

#[test]
fn doctor_reports_what_the_agents_policy_would_refuse_before_tightwad_up_tries() {
    // alpha lets a peer add only `-c`: `tightwad up` would add `--rpc` for the pool, so doctor
    // reports it as a flag failure with the policy's fix, and `up` starts nothing.
    let coordinator = format!(
        "[[process]]\nname = \"target\"\nkind = \"llama-server\"\nargs = {}\n\n[peer]\nallow_flags = [\"-c\"]\n",
        llama_args("{models}/target.gguf", 8080, "")
    );
    let worker = "[[process]]\nname = \"rpc\"\nkind = \"rpc-server\"\nargs = [\"-H\", \"0.0.0.0\", \"-p\", \"50052\"]\n";
    let cluster = TestCluster::start(
        &[
            HostPlan {
                name: "alpha",
                models: &["target.gguf"],
                agent_toml: &coordinator,
                binaries: None,
            },
            HostPlan {
                name: "beta",
                models: &[],
                agent_toml: worker,
                binaries: None,
            },
        ],
        "[[pools]]\nname = \"big\"\ncoordinator = \"alpha/target\"\nworkers = [\"beta/rpc\"]\n",
    );
    let agent_config = cluster
        .host("alpha")
        .agent
        .state_dir
        .with_extension("toml")
        .display()
        .to_string();
    let out = tightwad(&cluster.config, &["doctor", "--offline"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("flags") && l.contains("alpha/target"))
        .unwrap_or_else(|| panic!("no flags line for alpha/target:\n{text}"));
    assert!(line.contains('✗'), "{line}");
    assert!(
        line.contains("refused by this agent's [peer] policy: target: --rpc is not in allow_flags"),
        "{line}"
    );
    assert!(
        text.contains(&format!(
            "add \"--rpc\" to allow_flags under [peer] in {agent_config}"
        )),
        "{text}"
    );
    refused(&cluster.config, &["up"], &["doctor found"]);
}
