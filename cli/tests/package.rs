//! `scripts/package` on the debug binaries already built (`--profile dev --no-build`, so CI
//! builds nothing more): each .deb unpacked into a temporary root (`dpkg-deb -x`) runs its
//! `--version` and `--help` from there and holds its unit (which passes `systemd-analyze
//! verify` pointed at the unpacked binary), configs and maintainer scripts; each tarball holds
//! its binary. cargo-deb is installed by the script on first use (cached; scripts/test does it
//! before the tests run).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// target/debug/deps/package-… → target
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    exe.ancestors()
        .nth(3)
        .expect("target directory")
        .to_path_buf()
}

fn ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn packages_install_into_a_root_and_their_binaries_run_from_there() {
    let tightwad = PathBuf::from(env!("CARGO_BIN_EXE_tightwad"));
    assert!(
        tightwad.with_file_name("tightwad-agent").exists(),
        "build the agent first (cargo build -p tightwad-agent)"
    );
    let out = tempfile::tempdir().expect("out");
    let listed = ok(
        Command::new(repo().join("scripts/package"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(out.path())
            .env("CARGO_TARGET_DIR", target_dir()),
        "scripts/package",
    );
    let version = env!("CARGO_PKG_VERSION");
    for (pkg, unit, configs) in [
        (
            "tightwad",
            "tightwad.service",
            &["usr/share/doc/tightwad/tightwad.example.toml"][..],
        ),
        (
            "tightwad-agent",
            "tightwad-agent.service",
            &[
                "etc/tightwad/agent.toml",
                "usr/share/doc/tightwad-agent/agent.example.toml",
            ][..],
        ),
    ] {
        let deb = out.path().join(format!("{pkg}_{version}-1_amd64.deb"));
        assert!(listed.contains(&deb.display().to_string()), "{listed}");
        let root = tempfile::tempdir().expect("root");
        ok(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(root.path()),
            "dpkg-deb -x",
        );
        let bin = root.path().join("usr/bin").join(pkg);
        let shown = ok(Command::new(&bin).arg("--version"), "--version");
        assert_eq!(shown.trim(), format!("{pkg} {version}"));
        let help = ok(Command::new(&bin).arg("--help"), "--help");
        assert!(help.contains("Usage:"), "{help}");
        for config in configs {
            assert!(
                root.path().join(config).is_file(),
                "{config} missing in {pkg}"
            );
        }
        let packaged = root.path().join("lib/systemd/system").join(unit);
        let text = std::fs::read_to_string(&packaged).expect("packaged unit");
        assert_eq!(
            text,
            std::fs::read_to_string(repo().join("dist/systemd").join(unit)).expect("dist unit")
        );
        // The packaged unit, pointed at the unpacked binary, passes systemd-analyze verify.
        let pointed = root.path().join(unit);
        std::fs::write(
            &pointed,
            text.replace(&format!("/usr/bin/{pkg} "), &format!("{} ", bin.display())),
        )
        .expect("write");
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&pointed)
            .output()
            .expect("systemd-analyze (apt-get install systemd; scripts/test installs it)");
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "{said}");
        // The control files: the account the unit runs as is created on install.
        let control = tempfile::tempdir().expect("control");
        ok(
            Command::new("dpkg-deb")
                .arg("-e")
                .arg(&deb)
                .arg(control.path()),
            "dpkg-deb -e",
        );
        let postinst = std::fs::read_to_string(control.path().join("postinst")).expect("postinst");
        assert!(postinst.contains("useradd --system"), "{postinst}");
        let fields = ok(
            Command::new("dpkg-deb")
                .args(["-f"])
                .arg(&deb)
                .args(["Package", "Depends"]),
            "dpkg-deb -f",
        );
        assert!(fields.contains(&format!("Package: {pkg}")), "{fields}");

        let tarball = out
            .path()
            .join(format!("{pkg}-{version}-x86_64-unknown-linux-gnu.tar.gz"));
        let members = ok(Command::new("tar").arg("-tzf").arg(&tarball), "tar -t");
        let dir = format!("{pkg}-{version}-x86_64-unknown-linux-gnu");
        for member in [
            format!("{dir}/{pkg}"),
            format!("{dir}/{unit}"),
            format!("{dir}/README.md"),
        ] {
            assert!(
                members.lines().any(|l| l == member),
                "{member} not in:\n{members}"
            );
        }
    }
    let sums = std::fs::read_to_string(out.path().join("SHA256SUMS")).expect("SHA256SUMS");
    assert_eq!(sums.lines().count(), 4, "{sums}");
}
