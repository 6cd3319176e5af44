//! `tightwad service status`: whether the unit is installed and running, and the binary, config
//! and state folder its file names.

use super::*;

#[derive(serde::Serialize)]
struct Status {
    service: Role,
    unit: PathBuf,
    installed: bool,
    /// Whether the file is what `install` (with default arguments) would write now; absent
    /// when that cannot be worked out (no binary found).
    current: Option<bool>,
    /// The service manager's view (systemd: ActiveState, SubState, UnitFileState, MainPID).
    manager: Option<std::collections::BTreeMap<String, String>>,
    manager_error: Option<String>,
}

pub fn status(at: &WhereArgs, config: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let root = at.root.as_deref();
    let path = under(root, &unit_path(at));
    let text = std::fs::read_to_string(&path).ok();
    // What install would write now with the binary, config and state folder the installed unit
    // names (`-c` overrides its config), to tell an edited or outdated unit.
    let installed = text
        .as_deref()
        .filter(|_| at.format == Format::Systemd)
        .map(installed_paths)
        .unwrap_or_default();
    let config = config.map(Path::to_path_buf).or(installed.config.clone());
    let fresh = spec(
        &InstallArgs {
            at: at.clone(),
            dry_run: true,
            binary: installed.binary.clone(),
            state_dir: installed.state_dir.clone(),
            model_dirs: Vec::new(),
            service_user: installed.user.clone().unwrap_or_else(|| "tightwad".into()),
            no_start: true,
        },
        config.as_deref(),
    )
    .and_then(|s| render(at.format, &s))
    .ok();
    let mut status = Status {
        service: at.role,
        unit: path.clone(),
        installed: text.is_some(),
        current: text.as_ref().zip(fresh.as_ref()).map(|(a, b)| a == b),
        manager: None,
        manager_error: None,
    };
    if root.is_none() && at.format == Format::Systemd {
        let mut cmd = Command::new("systemctl");
        if at.user {
            cmd.arg("--user");
        }
        cmd.args([
            "show",
            at.role.unit_name(),
            "-p",
            "LoadState,ActiveState,SubState,UnitFileState,MainPID",
        ]);
        match cmd.output() {
            Ok(out) if out.status.success() => {
                status.manager = Some(
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                );
            }
            Ok(out) => {
                status.manager_error = Some(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
            Err(e) => status.manager_error = Some(format!("systemctl: {e}")),
        }
    }
    let active = status
        .manager
        .as_ref()
        .and_then(|m| m.get("ActiveState"))
        .map(|s| s == "active");
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let name = at.role.unit_name();
        if status.installed {
            println!("{name}: installed at {}", path.display());
            match status.current {
                Some(false) => println!(
                    "  differs from what `tightwad service install {}` would write now (other paths or an older tightwad); --dry-run shows it",
                    role_word(at.role)
                ),
                Some(true) => println!("  same as `tightwad service install {}` writes", role_word(at.role)),
                None => {}
            }
        } else {
            println!("{name}: not installed (no {})", path.display());
        }
        if let Some(m) = &status.manager {
            let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("?");
            println!(
                "  {} ({}), {}, main PID {}",
                get("ActiveState"),
                get("SubState"),
                get("UnitFileState"),
                get("MainPID")
            );
        }
        if let Some(e) = &status.manager_error {
            println!("  service manager: {e}");
        }
    }
    Ok(if status.installed && active != Some(false) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The paths an installed systemd unit names: its binary, `--config`, state folder
/// (`--state-dir`, or the proxy's `HOME`) and `User=`.
#[derive(Default)]
struct InstalledPaths {
    binary: Option<PathBuf>,
    config: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    user: Option<String>,
}

/// Splits an `ExecStart=` line into words (double quotes group, `%%` is `%`).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut word).replace("%%", "%"));
                    started = false;
                }
            }
            c => {
                word.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(word.replace("%%", "%"));
    }
    out
}

fn installed_paths(unit: &str) -> InstalledPaths {
    let mut found = InstalledPaths::default();
    for line in unit.lines() {
        if let Some(exec) = line.strip_prefix("ExecStart=") {
            let w = words(exec);
            found.binary = w.first().map(PathBuf::from);
            let after = |flag: &str| {
                w.iter()
                    .position(|x| x == flag)
                    .and_then(|i| w.get(i + 1))
                    .map(PathBuf::from)
            };
            found.config = after("--config");
            if let Some(state) = after("--state-dir") {
                found.state_dir = Some(state);
            }
        } else if let Some(home) = line.strip_prefix("Environment=HOME=") {
            found
                .state_dir
                .get_or_insert_with(|| PathBuf::from(words(home).pop().unwrap_or_default()));
        } else if let Some(user) = line.strip_prefix("User=") {
            found.user = Some(user.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_units_name_their_paths() {
        let found = installed_paths(
            "User=tw\nEnvironment=HOME=/var/lib/x\nExecStart=\"/opt/a b/tightwad-agent\" --config /etc/100%%.toml --state-dir /srv/state\n",
        );
        assert_eq!(found.binary, Some(PathBuf::from("/opt/a b/tightwad-agent")));
        assert_eq!(found.config, Some(PathBuf::from("/etc/100%.toml")));
        assert_eq!(found.state_dir, Some(PathBuf::from("/srv/state")));
        assert_eq!(found.user.as_deref(), Some("tw"));
    }

    #[test]
    fn agent_folders_come_from_its_config_with_tilde_as_the_service_home() {
        let (state, writable) = folders_in_config(
            Role::Agent,
            "model_dirs = [\"~/models\", \"/srv/models\"]\nreceive_dir = \"/srv/in\"\n[build]\nccache_dir = \"/var/cache/cc\"\n",
            Path::new("/var/lib/tightwad-agent"),
        )
        .expect("parse");
        assert_eq!(state, None);
        assert_eq!(
            writable,
            [
                "/var/lib/tightwad-agent/models",
                "/srv/models",
                "/srv/in",
                "/var/cache/cc"
            ]
            .map(PathBuf::from)
        );
    }
}
