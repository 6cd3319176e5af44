//! LAN discovery with real agents in network namespaces on one bridge (mDNS multicast crosses
//! it) and the real `tightwad` binary in a namespace of its own: an enrolled agent is marked
//! enrolled, an agent with discovery off is not found, an unenrolled one is shown but never
//! trusted, and one that announces an enrolled host's name with another key is flagged.
//! `tightwad init --discover` writes `[[hosts]]` from what answered, leaving the impostor out.
//!
//! Uses of the harness are kept to `netns::{Lab, Namespace}` (with the lab's folders) and
//! `AgentProcess::binary` (the agents here get configs of the test's own: the
//! impostor claims another agent's name).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tightwad_e2e::agents::AgentProcess;
use tightwad_e2e::netns::{Lab, Namespace};

fn tightwad_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TIGHTWAD_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tightwad"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} missing: build it (cargo build -p tightwad) or set TIGHTWAD_BIN",
        path.display()
    );
    path
}

/// `tightwad -c CONFIG ARGS` inside `ns` (or in this namespace with `None`).
fn tightwad(ns: Option<&Namespace>, config: &Path, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(tightwad_bin());
            c
        }
        None => Command::new(tightwad_bin()),
    };
    cmd.arg("-c")
        .arg(config)
        .args(args)
        .output()
        .expect("tightwad runs")
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A `tightwad-agent` in a namespace with a config of this test's own (the name an impostor
/// claims included), killed on drop.
struct Agent {
    child: std::process::Child,
    log: PathBuf,
}

impl Agent {
    fn start(ns: &Namespace, dir: &Path, name: &str, join: Option<&str>, extra: &str) -> Agent {
        std::fs::create_dir_all(dir).expect("agent dir");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nlisten = \"{}:7420\"\nstate_dir = \"{}\"\nmodel_dirs = [\"{}\"]\n{extra}",
                ns.ip,
                dir.join("state").display(),
                dir.display()
            ),
        )
        .expect("agent config");
        let log = dir.join("agent.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .arg(AgentProcess::binary())
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,quinn=warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"));
        if let Some(token) = join {
            cmd.args(["--join", token]);
        }
        let agent = Agent {
            child: cmd.spawn().expect("spawn tightwad-agent"),
            log,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !agent.log_text().contains("listening") {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent never listened:\n{}",
                agent.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        agent
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The certificate fingerprint it logged when it started listening.
    fn fingerprint(&self) -> String {
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains("listening"))
            .and_then(|l| l.split("fingerprint=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no fingerprint in the agent's log:\n{log}"))
            .to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn discovery_finds_announcing_agents_and_flags_an_impostor_without_trusting_anyone() {
    let mut lab = Lab::new();
    let ns_alpha = lab.add_namespace();
    let ns_silent = lab.add_namespace();
    let ns_impostor = lab.add_namespace();
    let ns_new = lab.add_namespace();
    let ns_coordinator = lab.add_namespace();
    let coordinator_state = lab.path("coordinator");
    let config = lab.path("files").join("tightwad.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[[hosts]]\nname = \"alpha\"\naddress = \"{}:7420\"\n[[hosts]]\nname = \"silent\"\naddress = \"{}:7420\"\n",
            coordinator_state.display(),
            ns_alpha.ip,
            ns_silent.ip
        ),
    )
    .expect("config");
    let token = || {
        let out = ok(
            tightwad(None, &config, &["token", "--ttl", "600", "--json"]),
            "token",
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("token JSON");
        v["token"].as_str().expect("token").to_string()
    };

    // alpha: enrolled, announcing. silent: enrolled, discovery off (the default). The impostor
    // calls itself alpha with a key of its own (the table form of the setting); "newcomer"
    // announces and was never enrolled.
    let alpha = Agent::start(
        &ns_alpha,
        &lab.path("alpha"),
        "alpha",
        Some(&token()),
        "discovery = true\n",
    );
    let silent = Agent::start(
        &ns_silent,
        &lab.path("silent"),
        "silent",
        Some(&token()),
        "",
    );
    let impostor = Agent::start(
        &ns_impostor,
        &lab.path("impostor"),
        "alpha",
        None,
        "[discovery]\ninterfaces = []\n",
    );
    let newcomer = Agent::start(
        &ns_new,
        &lab.path("newcomer"),
        "newcomer",
        None,
        "discovery = true\n",
    );
    // `status` enrolls alpha and silent (pins their certificates).
    ok(
        tightwad(None, &config, &["status", "--json"]),
        "status (enrolling)",
    );
    assert!(
        !silent.log_text().contains("announcing"),
        "discovery is off by default:\n{}",
        silent.log_text()
    );
    assert!(alpha
        .log_text()
        .contains("announcing this agent on the LAN"));
    let (alpha_fp, impostor_fp, newcomer_fp) = (
        alpha.fingerprint(),
        impostor.fingerprint(),
        newcomer.fingerprint(),
    );

    let out = tightwad(
        Some(&ns_coordinator),
        &config,
        &["hosts", "discover", "--json", "--timeout", "4"],
    );
    let found: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let agents = found.as_array().expect("a list");
    let at = |ip: &str| {
        agents
            .iter()
            .find(|a| a["address"] == format!("{ip}:7420"))
            .unwrap_or_else(|| panic!("nothing from {ip} in {found:#}"))
    };
    let a = at(&ns_alpha.ip);
    assert_eq!(a["name"], "alpha");
    assert_eq!(a["status"], "enrolled", "{a:#}");
    assert_eq!(a["fingerprint"], alpha_fp.as_str());
    assert_eq!(a["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(a["port"], 7420);
    assert!(
        agents
            .iter()
            .all(|x| x["address"] != format!("{}:7420", ns_silent.ip) && x["name"] != "silent"),
        "an agent with discovery off was found: {found:#}"
    );
    let n = at(&ns_new.ip);
    assert_eq!(n["status"], "not_enrolled", "{n:#}");
    assert_eq!(n["fingerprint"], newcomer_fp.as_str());
    let i = at(&ns_impostor.ip);
    assert_eq!(i["name"], "alpha");
    assert_eq!(i["fingerprint"], impostor_fp.as_str());
    assert_eq!(i["status"], "fingerprint_changed", "{i:#}");
    assert_eq!(i["expected_fingerprint"], alpha_fp.as_str(), "{i:#}");
    assert_eq!(agents.len(), 3, "{found:#}");
    assert_eq!(out.status.code(), Some(1), "a changed fingerprint exits 1");

    // The table says it loudly.
    let text = tightwad(
        Some(&ns_coordinator),
        &config,
        &["hosts", "discover", "--timeout", "4"],
    );
    let table = String::from_utf8_lossy(&text.stdout);
    assert!(
        table.contains(&format!(
            "!!! FINGERPRINT CHANGED: alpha at {}:7420",
            ns_impostor.ip
        )),
        "{table}"
    );
    assert!(table.contains("NOT enrolled"), "{table}");
    println!("{table}");

    // Finding is not trusting: neither the newcomer nor the impostor got pinned.
    let pins = std::fs::read_to_string(coordinator_state.join("peers.json")).expect("pins");
    assert!(pins.contains(&alpha_fp));
    assert!(
        !pins.contains(&newcomer_fp) && !pins.contains(&impostor_fp),
        "{pins}"
    );

    // init --discover: [[hosts]] from what answered, the impostor left out.
    let written = lab.path("files").join("discovered.toml");
    let init = tightwad(
        Some(&ns_coordinator),
        &written,
        &[
            "init",
            "--discover",
            "--discover-timeout",
            "4",
            "--state-dir",
            &coordinator_state.display().to_string(),
        ],
    );
    let init = ok(init, "init --discover");
    let stderr = String::from_utf8_lossy(&init.stderr);
    assert!(
        stderr.contains("!!! FINGERPRINT CHANGED: leaving alpha"),
        "{stderr}"
    );
    let hosts: Vec<(String, String)> = tightwad_coordinator::cluster::FleetConfig::load(&written)
        .expect("init wrote a fleet config")
        .hosts
        .into_iter()
        .map(|h| (h.name, h.address))
        .collect();
    assert_eq!(
        hosts,
        [
            ("alpha".to_string(), format!("{}:7420", ns_alpha.ip)),
            ("newcomer".to_string(), format!("{}:7420", ns_new.ip)),
        ],
        "{stderr}"
    );
}
