//! `tightwad service`: the units it writes pass `systemd-analyze verify`, round-trip through
//! install / status / uninstall in a temporary root, match what the packages ship
//! (`dist/systemd/`), the launchd plist is a valid plist; and both binaries really tell a
//! `Type=notify` service manager they are ready (a fake `NOTIFY_SOCKET`).
//!
//! `systemd-analyze` comes from Debian's `systemd` package (no running systemd needed);
//! `scripts/test` installs it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn tightwad() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tightwad"))
}

/// `tightwad-agent`, built next to `tightwad` (`cargo build -p tightwad-agent`, or the whole
/// workspace as nextest builds it).
fn agent_bin() -> PathBuf {
    let path = tightwad().with_file_name("tightwad-agent");
    assert!(
        path.exists(),
        "{} missing: build it (cargo build -p tightwad-agent)",
        path.display()
    );
    path
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn run(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(tightwad());
    cmd.args(args).env_remove("TIGHTWAD_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("tightwad runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn systemd_analyze() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("systemd-analyze"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "systemd-analyze is missing: apt-get install systemd (scripts/test installs it; it \
             needs no running systemd)"
        )
    })
}

/// `systemd-analyze verify` on a unit file: it must pass and print nothing (unknown or
/// misspelled directives are only warnings there, so any output fails the test).
fn verify(unit: &Path, user: bool) {
    let runtime = tempfile::tempdir().expect("runtime dir");
    let mut cmd = Command::new(systemd_analyze());
    if user {
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
    }
    let out = cmd
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {:?}\n{said}\n--- unit ---\n{}",
        unit.display(),
        out.status,
        std::fs::read_to_string(unit).unwrap_or_default()
    );
}

#[test]
fn generated_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("some config.toml");
    std::fs::write(&config, "model_dirs = [\"/srv/models\", \"~/models\"]\n").expect("config");
    let agent = agent_bin();
    for (role, binary) in [("proxy", tightwad()), ("agent", agent.clone())] {
        for user in [false, true] {
            let mut args = vec![
                "-c",
                config.to_str().expect("utf-8"),
                "service",
                "install",
                role,
                "--dry-run",
                "--binary",
                binary.to_str().expect("utf-8"),
                "--model-dir",
                "/srv/more models",
            ];
            if user {
                args.push("--user");
            }
            let unit = stdout(&run(&args, &[]));
            assert!(unit.contains("Type=notify"), "{unit}");
            let name = if role == "proxy" {
                "tightwad"
            } else {
                "tightwad-agent"
            };
            let path = dir
                .path()
                .join(if user { "user" } else { "system" })
                .join(format!("{name}.service"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &unit).expect("write unit");
            verify(&path, user);
        }
    }
}

#[test]
fn install_status_uninstall_round_trip_in_a_temporary_root() {
    let root = tempfile::tempdir().expect("root");
    let r = root.path().to_str().expect("utf-8");
    std::fs::create_dir_all(root.path().join("etc/tightwad")).expect("etc");
    std::fs::write(
        root.path().join("etc/tightwad/agent.toml"),
        "model_dirs = [\"/srv/models\", \"~/models\"]\nreceive_dir = \"/data/incoming\"\n",
    )
    .expect("agent config");
    let unit = root
        .path()
        .join("etc/systemd/system/tightwad-agent.service");

    let first = stdout(&run(&["service", "install", "agent", "--root", r], &[]));
    assert!(
        first.contains(&format!("wrote {}", unit.display())),
        "{first}"
    );
    let text = std::fs::read_to_string(&unit).expect("unit written");
    for line in [
        format!(
            "ExecStart={} --config /etc/tightwad/agent.toml --state-dir /var/lib/tightwad-agent",
            agent_bin().display()
        ),
        "ReadWritePaths=-/data/incoming".to_string(),
        "ReadWritePaths=-/srv/models".to_string(),
        "StateDirectory=tightwad-agent".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
    // ~/models is the service's HOME, its state folder: writable already, not listed again.
    assert!(!text.contains("/var/lib/tightwad-agent/models"), "{text}");
    let again = stdout(&run(&["service", "install", "agent", "--root", r], &[]));
    assert!(again.starts_with("unchanged:"), "{again}");

    let status = run(&["service", "status", "agent", "--root", r, "--json"], &[]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&status)).expect("JSON");
    assert_eq!(s["installed"], true, "{s}");
    assert_eq!(s["current"], true, "{s}");

    let removed = stdout(&run(&["service", "uninstall", "agent", "--root", r], &[]));
    assert!(removed.contains("removed"), "{removed}");
    assert!(!unit.exists());
    let status = run(&["service", "status", "agent", "--root", r], &[]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("not installed"));
    let twice = stdout(&run(&["service", "uninstall", "agent", "--root", r], &[]));
    assert!(twice.contains("not installed"), "{twice}");

    // A user unit goes under the user's ~/.config/systemd/user.
    let home = Path::new("/home/someone");
    stdout(&run(
        &["service", "install", "proxy", "--user", "--root", r],
        &[("HOME", home)],
    ));
    let user_unit = root
        .path()
        .join("home/someone/.config/systemd/user/tightwad.service");
    let text = std::fs::read_to_string(&user_unit).expect("user unit");
    assert!(
        text.contains("--config /home/someone/.config/tightwad/tightwad.toml proxy"),
        "{text}"
    );
    stdout(&run(
        &["service", "uninstall", "proxy", "--user", "--root", r],
        &[("HOME", home)],
    ));
    assert!(!user_unit.exists());
    // Nothing else was left behind in the root.
    let mut left = Vec::new();
    let mut stack = vec![root.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read root").flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                left.push(entry.path());
            }
        }
    }
    assert_eq!(left, [root.path().join("etc/tightwad/agent.toml")]);
}

#[test]
fn the_packaged_units_are_what_install_writes_for_the_packaged_paths() {
    let empty = tempfile::tempdir().expect("empty root");
    let r = empty.path().to_str().expect("utf-8");
    for (role, binary, config, file) in [
        (
            "agent",
            "/usr/bin/tightwad-agent",
            "/etc/tightwad/agent.toml",
            "tightwad-agent.service",
        ),
        (
            "proxy",
            "/usr/bin/tightwad",
            "/etc/tightwad/tightwad.toml",
            "tightwad.service",
        ),
    ] {
        let generated = stdout(&run(
            &[
                "-c",
                config,
                "service",
                "install",
                role,
                "--dry-run",
                "--binary",
                binary,
                "--root",
                r,
            ],
            &[],
        ));
        let shipped =
            std::fs::read_to_string(repo().join("dist/systemd").join(file)).expect("dist unit");
        assert_eq!(
            generated, shipped,
            "dist/systemd/{file} is stale: regenerate it with `tightwad -c {config} service install {role} --dry-run --binary {binary} --root $(mktemp -d) > dist/systemd/{file}`"
        );
    }
}

#[test]
fn launchd_plists_are_valid_property_lists() {
    let dir = tempfile::tempdir().expect("tmp");
    let plist = stdout(&run(
        &[
            "-c",
            "/Users/me/tightwad & co/agent.toml",
            "service",
            "install",
            "agent",
            "--format",
            "launchd",
            "--dry-run",
            "--binary",
            "/usr/local/bin/tightwad-agent",
        ],
        &[],
    ));
    let path = dir.path().join("agent.plist");
    std::fs::write(&path, &plist).expect("write plist");
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&path)
        .output()
        .expect("python3 (a requirement of the repository) runs");
    assert!(
        parsed.status.success(),
        "not a property list: {}\n{plist}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&parsed.stdout).expect("JSON");
    assert_eq!(v["Label"], "com.tightwad.tightwad-agent");
    assert_eq!(
        v["ProgramArguments"],
        serde_json::json!([
            "/usr/local/bin/tightwad-agent",
            "--config",
            "/Users/me/tightwad & co/agent.toml",
            "--state-dir",
            "/var/lib/tightwad-agent"
        ])
    );
    assert_eq!(v["UserName"], "tightwad");
    assert_eq!(v["KeepAlive"]["SuccessfulExit"], false);
    assert_eq!(v["RunAtLoad"], true);
}

/// A fake service manager's notification socket: what a binary sends to `NOTIFY_SOCKET`.
fn wait_for_ready(socket: &UnixDatagram, what: &str) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{what} never notified readiness: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn both_binaries_notify_readiness_once_they_listen() {
    let dir = tempfile::tempdir().expect("tmp");

    let socket_path = dir.path().join("agent.notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let mut agent = Command::new(agent_bin())
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(dir.path().join("agent-state"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent starts");
    let said = wait_for_ready(&socket, "tightwad-agent");
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(said.lines().any(|l| l == "READY=1"), "{said:?}");

    let socket_path = dir.path().join("proxy.notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut proxy = Command::new(tightwad())
        .args(["proxy", "--target", "http://127.0.0.1:9", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("TIGHTWAD_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("proxy starts");
    let said = wait_for_ready(&socket, "tightwad proxy");
    // Ready means it accepts connections.
    let connected = std::net::TcpStream::connect(("127.0.0.1", port));
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(said.lines().any(|l| l == "READY=1"), "{said:?}");
    assert!(connected.is_ok(), "READY before listening: {connected:?}");
}
