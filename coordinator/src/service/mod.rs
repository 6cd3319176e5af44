//! `tightwad service install|uninstall|status proxy|agent`: the proxy or the agent as a system
//! service of this host — a systemd unit (system or `--user`), or a launchd plist on macOS —
//! with the binary, config and state folders given, `Type=notify` (both binaries tell systemd
//! when they are ready) and sandboxing that still lets the agent run llama.cpp and write its
//! model folders. `--dry-run` prints the file; `--root DIR` writes under DIR and touches no
//! service manager (packaging, tests).

mod install;
mod status;
pub mod unit;

pub use install::{install, uninstall};
pub use status::status;

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

fn role_word(role: Role) -> &'static str {
    match role {
        Role::Proxy => "proxy",
        Role::Agent => "agent",
    }
}

/// `tightwad service …`; `config` is the global `-c PATH`.
pub fn run(cmd: ServiceCommand, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::Install(args) => install(&args, config),
        ServiceCommand::Uninstall(at) => uninstall(&at),
        ServiceCommand::Status { at, json } => status(&at, config, json),
    }
}
