//! `tightwad service install|uninstall|status proxy|agent`: the proxy or the agent as a system
//! service of this host — a systemd unit (system or `--user`), or a launchd plist on macOS —
//! with the binary, config and state folders given, `Type=notify` (both binaries tell systemd
//! when they are ready) and sandboxing that still lets the agent run llama.cpp and write its
//! model folders. `--dry-run` prints the file; `--root DIR` writes under DIR and touches no
//! service manager (packaging, tests).

pub mod unit;

pub use unit::{Role, Spec};

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Write the unit (systemd; a launchd plist on macOS) for the proxy or the agent, then
    /// reload the service manager, enable and (re)start it. The config is `-c PATH` (default
    /// /etc/tightwad/tightwad.toml or agent.toml; ~/.config/tightwad/… with --user).
    #[command(
        after_long_help = "Examples:\n  sudo tightwad service install agent\n  tightwad service install proxy --user -c ~/tightwad.toml\n  tightwad service install agent --dry-run --model-dir /srv/models\n  tightwad service install agent --root /tmp/pkg --binary /usr/bin/tightwad-agent"
    )]
    Install(InstallArgs),
    /// Stop and disable the service and remove its unit (or plist).
    #[command(
        after_long_help = "Examples:\n  sudo tightwad service uninstall agent\n  tightwad service uninstall proxy --user"
    )]
    Uninstall(WhereArgs),
    /// Whether the unit is installed, whether it is what `install` would write now, and what
    /// the service manager says (active, enabled, main PID). Exit 1 when not installed or not
    /// running.
    #[command(
        after_long_help = "Examples:\n  tightwad service status agent\n  tightwad service status proxy --user --json"
    )]
    Status {
        #[command(flatten)]
        at: WhereArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A systemd unit (Linux).
    Systemd,
    /// A launchd plist (macOS).
    Launchd,
}

impl Format {
    pub fn native() -> Format {
        if cfg!(target_os = "macos") {
            Format::Launchd
        } else {
            Format::Systemd
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct WhereArgs {
    /// Which service.
    #[arg(value_enum)]
    pub role: Role,
    /// A service of your user (`systemctl --user`, ~/Library/LaunchAgents) instead of a system one.
    #[arg(long)]
    pub user: bool,
    /// Work in this folder as if it were `/` (packaging, tests): nothing is started or stopped.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// systemd unit or launchd plist (default: what this system uses).
    #[arg(long, value_enum, default_value_t = Format::native())]
    pub format: Format,
}

#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    #[command(flatten)]
    pub at: WhereArgs,
    /// Print the unit instead of writing it.
    #[arg(long)]
    pub dry_run: bool,
    /// The executable (default: this `tightwad` for the proxy; `tightwad-agent` next to it or
    /// on PATH for the agent).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// State folder: the agent's identity, pins, logs and builds, or the proxy's HOME
    /// (default /var/lib/tightwad-agent or /var/lib/tightwad; with --user: the defaults in
    /// your home).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A folder the service may write besides its state (repeatable); the agent's model folders
    /// are read from its config when none is given.
    #[arg(long = "model-dir", value_name = "DIR")]
    pub model_dirs: Vec<PathBuf>,
    /// The account a system service runs as (the .deb packages create `tightwad`).
    #[arg(long, default_value = "tightwad")]
    pub service_user: String,
    /// Write the unit and reload the service manager, but do not enable or start it.
    #[arg(long)]
    pub no_start: bool,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn config_home() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home().join(".config"))
}

/// `path` under `root` (an absolute path made relative to it).
fn under(root: Option<&Path>, path: &Path) -> PathBuf {
    match root {
        Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_path_buf(),
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("making {} absolute", path.display()))
}

/// Where the unit lives on the target system (before `--root`).
pub fn unit_path(at: &WhereArgs) -> PathBuf {
    let name = at.role.unit_name();
    match (at.format, at.user) {
        (Format::Systemd, false) => PathBuf::from(format!("/etc/systemd/system/{name}.service")),
        (Format::Systemd, true) => config_home()
            .join("systemd/user")
            .join(format!("{name}.service")),
        (Format::Launchd, false) => PathBuf::from(format!(
            "/Library/LaunchDaemons/{}.plist",
            at.role.launchd_label()
        )),
        (Format::Launchd, true) => home()
            .join("Library/LaunchAgents")
            .join(format!("{}.plist", at.role.launchd_label())),
    }
}

fn default_config(role: Role, user: bool) -> PathBuf {
    let file = match role {
        Role::Proxy => "tightwad.toml",
        Role::Agent => "agent.toml",
    };
    if user {
        config_home().join("tightwad").join(file)
    } else {
        Path::new("/etc/tightwad").join(file)
    }
}

fn resolve_binary(role: Role, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return absolute(path);
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    match role {
        Role::Proxy => Ok(exe),
        Role::Agent => {
            let sibling = exe.with_file_name(role.binary_name());
            if sibling.is_file() {
                return Ok(sibling);
            }
            std::env::var_os("PATH")
                .and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(role.binary_name()))
                        .find(|p| p.is_file())
                })
                .with_context(|| {
                    format!(
                        "cannot find tightwad-agent next to {} or on PATH: install it (the tightwad-agent package, or `cargo install --locked --path agent`) or pass --binary PATH",
                        exe.display()
                    )
                })
        }
    }
}

/// Expands a leading `~` to `home`.
fn expand(text: &str, home: &Path) -> PathBuf {
    match text.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if text == "~" => home.to_path_buf(),
        None => PathBuf::from(text),
    }
}

/// The folders a config file names that its service writes: the agent's model folders,
/// receive folder and build cache, either's `state_dir`. `~` is the service's HOME.
fn folders_in_config(
    role: Role,
    text: &str,
    home: &Path,
) -> anyhow::Result<(Option<PathBuf>, Vec<PathBuf>)> {
    let value: toml::Value = toml::from_str(text)?;
    let string = |v: Option<&toml::Value>| v.and_then(|v| v.as_str()).map(|s| expand(s, home));
    let state = string(value.get("state_dir"));
    let mut writable = Vec::new();
    if role == Role::Agent {
        if let Some(dirs) = value.get("model_dirs").and_then(|v| v.as_array()) {
            writable.extend(
                dirs.iter()
                    .filter_map(|d| d.as_str())
                    .map(|d| expand(d, home)),
            );
        }
        writable.extend(string(value.get("receive_dir")));
        writable.extend(string(value.get("build").and_then(|b| b.get("ccache_dir"))));
    }
    Ok((state, writable))
}

/// The unit's spec from the arguments and, where it exists, the config file.
pub fn spec(args: &InstallArgs, config: Option<&Path>) -> anyhow::Result<Spec> {
    let at = &args.at;
    let role = at.role;
    let config = match config {
        Some(path) => absolute(path)?,
        None => default_config(role, at.user),
    };
    let binary = resolve_binary(role, args.binary.as_deref())?;
    let mut state_dir = match &args.state_dir {
        Some(dir) => absolute(dir)?,
        None if at.user => PathBuf::new(),
        None => PathBuf::from(role.system_state_dir()),
    };
    // `~` in the config means the service's HOME: the state folder of a system service.
    let service_home = if at.user { home() } else { state_dir.clone() };
    let mut writable: Vec<PathBuf> = args
        .model_dirs
        .iter()
        .map(|d| absolute(d))
        .collect::<Result<_, _>>()?;
    let config_file = under(at.root.as_deref(), &config);
    match std::fs::read_to_string(&config_file) {
        Ok(text) => {
            let (config_state, config_writable) = folders_in_config(role, &text, &service_home)
                .with_context(|| format!("reading {}", config_file.display()))?;
            match (role, config_state) {
                // The agent's own state folder from its config, unless --state-dir says otherwise.
                (Role::Agent, Some(dir)) if args.state_dir.is_none() => state_dir = dir,
                (_, Some(dir)) => writable.push(dir),
                _ => {}
            }
            if args.model_dirs.is_empty() {
                writable.extend(config_writable);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", config_file.display())),
    }
    // Folders inside the state folder are writable already.
    writable.retain(|d| {
        d.is_absolute() && (state_dir.as_os_str().is_empty() || !d.starts_with(&state_dir))
    });
    writable.sort();
    writable.dedup();
    anyhow::ensure!(
        !args.service_user.is_empty()
            && args
                .service_user
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
        "--service-user {:?} is not an account name",
        args.service_user
    );
    Ok(Spec {
        role,
        user: at.user,
        binary,
        config,
        state_dir,
        writable,
        service_user: args.service_user.clone(),
    })
}

/// The file `install` writes for `spec`.
pub fn render(format: Format, spec: &Spec) -> anyhow::Result<String> {
    match format {
        Format::Systemd => unit::systemd(spec),
        Format::Launchd => {
            let name = spec.role.unit_name();
            let log = if spec.user {
                home().join("Library/Logs").join(format!("{name}.log"))
            } else {
                PathBuf::from(format!("/Library/Logs/{name}.log"))
            };
            unit::launchd(spec, &log)
        }
    }
}

/// Runs a service-manager command, echoing it; its failure is an error naming the command.
fn manager(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn systemctl(user: bool, args: &[&str]) -> anyhow::Result<()> {
    let mut all = Vec::new();
    if user {
        all.push("--user");
    }
    all.extend_from_slice(args);
    manager("systemctl", &all)
}

fn account_exists(name: &str) -> bool {
    match Command::new("getent").args(["passwd", name]).output() {
        Ok(out) => out.status.success(),
        Err(_) => std::fs::read_to_string("/etc/passwd")
            .map(|t| t.lines().any(|l| l.split(':').next() == Some(name)))
            .unwrap_or(true),
    }
}

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

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Proxy => "proxy",
        Role::Agent => "agent",
    }
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

/// `tightwad service …`; `config` is the global `-c PATH`.
pub fn run(cmd: ServiceCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Install(args) => install(&args, config),
        ServiceCommand::Uninstall(at) => uninstall(&at),
        ServiceCommand::Status { at, json } => status(&at, config, json),
    }
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
