//! An agent's `[peer]` policy against a real coordinator: the coordinator's key runs code on every
//! agent it enrolled (any llama-server flag, any file as a model, `tightwad build`), so an agent
//! can narrow what a peer may ask. Forbidden flags, model paths outside the model folders (by
//! `..` or by symlink) and builds when they are off are refused where the request arrives, with
//! the fix and the file to make it in, through the `tightwad` CLI as a user sees it; allowed
//! starts still run; and `tightwad doctor` reports what `tightwad up` would be refused.
//!
//! Real agents in network namespaces and the real `tightwad` binary (`cargo build --workspace
//! --bins` first).

use tightwad_e2e::cluster::*;
use tightwad_e2e::test_env::*;

/// `tightwad ARGS` must fail, and say `needles` on stderr.
fn refused(cluster: &TestCluster, args: &[&str], needles: &[&str]) {
    let out = cluster.tightwad(args);
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
    let cluster = ClusterPlan::new()
        .host("alpha")
        .models(&["target.gguf"])
        .llama_server("target", "{models}/target.gguf", 8080, "")
        .agent_toml("\n[peer]\nallow_build = false\n")
        .start();
    let host = cluster.host("alpha");
    let agent_config = host.agent.config().display().to_string();
    let inside = host.models.join("target.gguf");
    let inside = inside.display().to_string();

    // A flag that writes any file the agent can: refused, nothing written.
    let written = cluster.lab.dir.path().join("written-by-a-peer.log");
    let mut args = vec!["agent", "start", "alpha", "target", "--"];
    let log_args = start_args(&inside, &["--log-file", &written.display().to_string()]);
    args.extend(log_args.iter().map(String::as_str));
    refused(
        &cluster,
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
            &cluster,
            &args,
            &[
                &format!("-m {model} is not a file inside the model folders"),
                &format!("set confine_model_paths = false under [peer] in {agent_config}"),
            ],
        );
    }

    // `tightwad build` is off on this agent: refused before anything is uploaded or compiled.
    refused(
        &cluster,
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
    let out = cluster.tightwad(&args);
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
    let cluster = ClusterPlan::target_and_rpc_worker("{models}/target.gguf", "")
        .host("alpha")
        .models(&["target.gguf"])
        .agent_toml("\n[peer]\nallow_flags = [\"-c\"]\n")
        .pool("big", "alpha/target", &["beta/rpc"])
        .start();
    let agent_config = cluster.host("alpha").agent.config().display().to_string();
    let out = cluster.tightwad(&["doctor", "--offline"]);
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
    refused(&cluster, &["up"], &["doctor found"]);
}
