//! Where the binary looks for its config and how it says what went wrong: `tightwad proxy` reads
//! `./tightwad.toml` like every other command, and without one every command says which file it
//! looked for; errors name each cause once and the exit codes are documented; `tightwad doctor`
//! fails on a target or an agent that does not answer, with a hint that names both.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// `tightwad proxy` reads `./tightwad.toml` like every other command (before: "no target
/// configured"); without a file, the proxy and the fleet commands say which file they looked for,
/// exit 2, and create no coordinator keys.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_reads_tightwad_toml_and_commands_without_one_say_where_they_looked() {
    let sandbox = Sandbox::new("cwdconfig");
    let (dir, home) = (&sandbox.dir, &sandbox.home);
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    sandbox.write(
        "tightwad.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\n\n[[pairings]]\nname = \"m\"\ntarget = \"{dead}\"\n"
        ),
    );
    let log = dir.join("proxy.log");
    let mut proxy = Running(
        sandbox
            .tightwad()
            .arg("proxy")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("proxy starts"),
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/live"))
            .send()
            .await
        {
            assert_eq!(r.status(), 200);
            break;
        }
        if let Ok(Some(status)) = proxy.0.try_wait() {
            panic!(
                "the proxy exited ({status}) instead of reading ./tightwad.toml: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the proxy did not listen on the file's address: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let models: Value = http
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    assert_eq!(models["data"][0]["id"], "m", "{models}");
    drop(proxy);

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).expect("empty dir");
    for args in [
        &["proxy"][..],
        &["status"],
        &["doctor"],
        &["models", "list"],
    ] {
        let out = bare(&empty, home).args(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("looked for tightwad.toml")
                && stderr.contains(&empty.join("tightwad.toml").display().to_string()),
            "{args:?} does not say which file it looked for: {stderr}"
        );
        assert!(
            !home.join(".tightwad").exists(),
            "{args:?} created coordinator state without a config file"
        );
    }
    sandbox.remove();
}

/// Errors name each cause once (before: `cannot read nope.toml: No such file or directory (os
/// error 2): No such file or directory (os error 2)`), show a non-GGUF file's first bytes as text
/// (before: `magic [108, 105, 115, 116]`), exit 2, and the exit codes are in `--help`.
#[test]
fn errors_print_each_cause_once_and_exit_codes_are_documented() {
    let sandbox = Sandbox::new("errors");

    let out = sandbox
        .tightwad()
        .args(["-c", "nope.toml", "proxy"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read nope.toml"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is printed more than once: {stderr}"
    );

    sandbox.write("list.txt", "listen = 1\nmore text here\n");
    let out = sandbox
        .tightwad()
        .args(["inspect", "list.txt"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not a GGUF file (starts with \"list\")") && !stderr.contains("[108"),
        "{stderr}"
    );

    let help = sandbox.tightwad().arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("Exit codes:")
            && help.contains("0  ok")
            && help.contains("1  a check failed")
            && help.contains("2  usage or configuration error"),
        "{help}"
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README");
    assert!(
        readme.contains("**Exit codes**")
            && readme.contains("| 1 | a check failed")
            && readme.contains("| 2 | usage or configuration error"),
        "the README does not document the exit codes"
    );
    sandbox.remove();
}

/// `tightwad doctor` fails (exit 1, `ok: false`) when a configured target does not answer
/// (before: a warning, "live checks skipped", exit 0), and the hint for an agent that does not
/// answer names the UDP port and the host each in its place (before: "check that UDP 127.0.0.1
/// reaches it").
#[test]
fn doctor_fails_on_a_target_or_agent_that_does_not_answer() {
    let sandbox = Sandbox::new("doctordown");

    let dead = format!("http://127.0.0.1:{}", free_port());
    let pairing = sandbox.config(
        "pairing.toml",
        &format!("\n[[pairings]]\nname = \"m\"\ntarget = \"{dead}\"\n"),
    );
    let out = sandbox.run(&pairing, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    let target = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| {
            c["category"] == "network" && c["subject"].as_str().is_some_and(|s| s.contains(&dead))
        })
        .unwrap_or_else(|| panic!("no network check for the target: {report:#}"));
    assert_eq!(target["status"], "fail", "{target:#}");

    // An agent that does not answer: a pending join token so the doctor tries to connect.
    let port = free_port();
    let hosts = sandbox.config(
        "hosts.toml",
        &format!("\n[[hosts]]\nname = \"gpu-box\"\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let token = sandbox.run(&hosts, &["token", "--json"]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let out = sandbox.run(&hosts, &["doctor", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    let host = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["category"] == "host" && c["subject"] == "gpu-box")
        .unwrap_or_else(|| panic!("no host check: {report:#}"));
    assert_eq!(host["status"], "fail", "{host:#}");
    let hint = host["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(&format!("UDP port {port} on 127.0.0.1")),
        "the hint does not put the port and the host in their places: {hint}"
    );
    sandbox.remove();
}
