//! `tightwad service install` and `uninstall`: the unit written (or printed), the service
//! manager told, and undone.

use super::*;

pub fn install(args: &InstallArgs, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let at = &args.at;
    let spec = spec(args, config)?;
    let text = render(at.format, &spec)?;
    let target = unit_path(at);
    if args.dry_run {
        eprintln!("# {} (not written: --dry-run)", target.display());
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let root = at.root.as_deref();
    if root.is_none()
        && !at.user
        && at.format == Format::Systemd
        && !account_exists(&spec.service_user)
    {
        anyhow::bail!(
            "the account {:?} does not exist: create it (`sudo useradd --system --user-group --home-dir {} --shell /usr/sbin/nologin {0}`; the .deb packages do) or pass --service-user NAME",
            spec.service_user,
            spec.role.system_state_dir()
        );
    }
    let path = under(root, &target);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "creating {}{}",
                dir.display(),
                if at.user {
                    ""
                } else {
                    " (a system service needs root: sudo, or --user)"
                }
            )
        })?;
    }
    let unchanged = std::fs::read_to_string(&path).is_ok_and(|old| old == text);
    let tmp = path.with_extension("tightwad-tmp");
    std::fs::write(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| {
            format!(
                "writing {}{}",
                path.display(),
                if at.user {
                    ""
                } else {
                    " (a system service needs root: sudo, or --user)"
                }
            )
        })?;
    println!(
        "{} {}",
        if unchanged { "unchanged:" } else { "wrote" },
        path.display()
    );
    let config_file = under(root, &spec.config);
    let config_missing = !config_file.exists();
    if config_missing {
        eprintln!(
            "warning: {} does not exist yet: the service needs it to start ({})",
            config_file.display(),
            match spec.role {
                Role::Proxy => "`tightwad init -c PATH` writes one",
                Role::Agent => "the example is agent/agent.example.toml, or /usr/share/doc/tightwad-agent/agent.example.toml from the package",
            }
        );
    }
    if root.is_some() {
        return Ok(ExitCode::SUCCESS);
    }
    let name = spec.role.unit_name();
    let path_text = path.to_string_lossy().into_owned();
    let start = !args.no_start && !config_missing;
    match at.format {
        Format::Systemd => {
            systemctl(at.user, &["daemon-reload"])?;
            if start {
                systemctl(at.user, &["enable", name])?;
                systemctl(at.user, &["restart", name])?;
                println!(
                    "{name} is running; `tightwad service status {}{}` shows it",
                    role_word(spec.role),
                    if at.user { " --user" } else { "" }
                );
            } else {
                println!(
                    "not started; when ready: systemctl{} enable --now {name}",
                    if at.user { " --user" } else { "" }
                );
            }
            if at.user {
                println!("a user service stops when you log out unless lingering is on: sudo loginctl enable-linger $USER");
            }
        }
        Format::Launchd => {
            if start {
                let _ = Command::new("launchctl")
                    .args(["unload", &path_text])
                    .output();
                manager("launchctl", &["load", "-w", &path_text])?;
            } else {
                println!("not started; when ready: launchctl load -w {path_text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(at: &WhereArgs) -> anyhow::Result<ExitCode> {
    let root = at.root.as_deref();
    let path = under(root, &unit_path(at));
    if !path.exists() {
        println!("not installed: no {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let name = at.role.unit_name();
    if root.is_none() {
        match at.format {
            Format::Systemd => {
                if let Err(e) = systemctl(at.user, &["disable", "--now", name]) {
                    eprintln!("warning: {e:#}");
                }
            }
            Format::Launchd => {
                let text = path.to_string_lossy().into_owned();
                if let Err(e) = manager("launchctl", &["unload", "-w", &text]) {
                    eprintln!("warning: {e:#}");
                }
            }
        }
    }
    std::fs::remove_file(&path).with_context(|| {
        format!(
            "removing {}{}",
            path.display(),
            if at.user {
                ""
            } else {
                " (a system service needs root: sudo)"
            }
        )
    })?;
    println!("removed {}", path.display());
    if root.is_none() && at.format == Format::Systemd {
        systemctl(at.user, &["daemon-reload"])?;
    }
    Ok(ExitCode::SUCCESS)
}
