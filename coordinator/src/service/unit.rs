//! The text of a systemd unit or a launchd plist for the proxy or the agent, from a [`Spec`].
//! Pure functions: `tightwad service install` writes what they return, the packages ship what
//! they return for the packaged paths (`dist/systemd/`, checked by a test).

use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `tightwad proxy`: the OpenAI endpoint.
    Proxy,
    /// `tightwad-agent`: the per-host agent.
    Agent,
}

impl Role {
    /// The systemd unit name without `.service` (also the launchd label's last part).
    pub fn unit_name(self) -> &'static str {
        match self {
            Role::Proxy => "tightwad",
            Role::Agent => "tightwad-agent",
        }
    }

    pub fn binary_name(self) -> &'static str {
        match self {
            Role::Proxy => "tightwad",
            Role::Agent => "tightwad-agent",
        }
    }

    /// The state folder of a system service under /var/lib (systemd's `StateDirectory=`).
    pub fn system_state_dir(self) -> &'static str {
        match self {
            Role::Proxy => "/var/lib/tightwad",
            Role::Agent => "/var/lib/tightwad-agent",
        }
    }

    pub fn launchd_label(self) -> String {
        format!("com.tightwad.{}", self.unit_name())
    }
}

/// What a unit is made of; every path absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub role: Role,
    /// A user service (`systemctl --user`, `~/Library/LaunchAgents`) instead of a system one.
    pub user: bool,
    pub binary: PathBuf,
    pub config: PathBuf,
    /// The folder the service keeps its state in (identity, pinned peers, logs, builds). The
    /// agent gets it as `--state-dir`, the proxy as its `HOME` (its coordinator identity lives
    /// in `~/.tightwad/coordinator`) — system services only; a user service keeps the defaults
    /// in the user's home.
    pub state_dir: PathBuf,
    /// More folders the service writes: the agent's model folders (it receives models into
    /// them) and build cache; a `state_dir` set in the config file.
    pub writable: Vec<PathBuf>,
    /// The account a system service runs as.
    pub service_user: String,
}

/// A path as one systemd word: `%` doubled, quoted when it has blanks. Paths with quotes,
/// backslashes or control characters are refused (they would not survive the round trip).
pub fn systemd_word(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not valid UTF-8; systemd units need UTF-8 paths",
            path.display()
        )
    })?;
    anyhow::ensure!(
        !text.chars().any(|c| c == '"' || c == '\'' || c == '\\' || c.is_control()),
        "{text:?}: a path with quotes, backslashes or control characters cannot go in a systemd unit; move it"
    );
    let escaped = text.replace('%', "%%");
    Ok(if escaped.contains(char::is_whitespace) {
        format!("\"{escaped}\"")
    } else {
        escaped
    })
}

/// The systemd unit.
pub fn systemd(spec: &Spec) -> anyhow::Result<String> {
    let bin = systemd_word(&spec.binary)?;
    let config = systemd_word(&spec.config)?;
    let state = systemd_word(&spec.state_dir)?;
    let name = spec.role.unit_name();
    let mut u = String::new();
    let journal = if spec.user { "--user-unit" } else { "-u" };
    u.push_str(&format!(
        "# Written by `tightwad service install`; re-run it to change this file, `tightwad service\n\
         # uninstall` removes it. Logs: journalctl {journal} {name}\n"
    ));
    u.push_str("[Unit]\n");
    u.push_str(match spec.role {
        Role::Proxy => "Description=Tightwad proxy: speculative decoding across the LAN, behind one OpenAI endpoint\n",
        Role::Agent => "Description=Tightwad agent: supervises llama.cpp servers, reports inventory, moves model files\n",
    });
    u.push_str("Wants=network-online.target\nAfter=network-online.target\n\n[Service]\n");
    // Both binaries tell systemd when they are ready: the proxy once it listens and probed its
    // backends, the agent once its QUIC endpoint listens (sd_notify READY=1).
    u.push_str("Type=notify\n");
    if !spec.user {
        u.push_str(&format!("User={0}\nGroup={0}\n", spec.service_user));
    }
    u.push_str("Environment=RUST_LOG=info\n");
    if !spec.user {
        u.push_str(&format!("Environment=HOME={state}\n"));
        if let Ok(rest) = spec.state_dir.strip_prefix("/var/lib") {
            // systemd creates it, owned by User=, mode 0700.
            u.push_str(&format!(
                "StateDirectory={}\nStateDirectoryMode=0700\n",
                systemd_word(rest)?
            ));
        }
    }
    match spec.role {
        Role::Proxy => u.push_str(&format!(
            "ExecStart={bin} --config {config} proxy --log-format json\n\
             # `systemctl reload tightwad`: re-read the pairings; in-flight requests finish as they began.\n\
             ExecReload=/bin/kill -HUP $MAINPID\n\
             # SIGTERM: stop accepting, let in-flight streams finish, then exit.\n\
             KillSignal=SIGTERM\nTimeoutStopSec=120\n"
        )),
        Role::Agent => {
            if spec.user && spec.state_dir == Path::new("") {
                u.push_str(&format!("ExecStart={bin} --config {config}\n"));
            } else {
                u.push_str(&format!(
                    "ExecStart={bin} --config {config} --state-dir {state}\n"
                ));
            }
            u.push_str(
                "# `systemctl reload`: re-read agent.toml; only servers whose entry changed restart.\n\
                 ExecReload=/bin/kill -HUP $MAINPID\n\
                 # SIGTERM to the agent, which stops its llama-server/rpc-server children itself; whatever\n\
                 # is left after TimeoutStopSec gets SIGKILL.\n\
                 KillSignal=SIGTERM\nKillMode=mixed\nTimeoutStopSec=60\n",
            );
        }
    }
    u.push_str("Restart=on-failure\nRestartSec=5\n");
    u.push_str("NoNewPrivileges=yes\n");
    if spec.user {
        // A user manager applies most sandboxing only through user namespaces, which many
        // distributions restrict; the service runs with the user's own rights.
        u.push_str("\n[Install]\nWantedBy=default.target\n");
        return Ok(u);
    }
    u.push_str("# Sandboxing: the whole file system read-only except the folders below.\n");
    u.push_str("ProtectSystem=strict\n");
    match spec.role {
        Role::Proxy => u.push_str(
            "ProtectHome=yes\nPrivateDevices=yes\nMemoryDenyWriteExecute=yes\nRestrictNamespaces=yes\nProtectHostname=yes\nCapabilityBoundingSet=\n",
        ),
        // The agent starts llama.cpp / vLLM: GPU device nodes stay visible (no PrivateDevices),
        // JIT-compiled kernels need writable+executable memory (no MemoryDenyWriteExecute), and
        // model folders under /home stay readable (ProtectHome=read-only).
        Role::Agent => u.push_str("ProtectHome=read-only\n"),
    }
    u.push_str(
        "PrivateTmp=yes\nProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\nProtectClock=yes\nRestrictSUIDSGID=yes\nRestrictRealtime=yes\n\
         LockPersonality=yes\nSystemCallArchitectures=native\n\
         # AF_NETLINK: listing interfaces (LAN discovery); AF_UNIX: readiness to systemd.\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n",
    );
    if spec.state_dir.strip_prefix("/var/lib").is_err() {
        u.push_str(&format!("ReadWritePaths=-{state}\n"));
    }
    for dir in &spec.writable {
        // `-`: a folder that does not exist (yet) does not stop the service from starting.
        u.push_str(&format!("ReadWritePaths=-{}\n", systemd_word(dir)?));
    }
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(u)
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn path_xml(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("{} is not valid UTF-8", path.display()))?;
    anyhow::ensure!(
        !text.chars().any(char::is_control),
        "{text:?}: a path with control characters cannot go in a launchd plist"
    );
    Ok(xml(text))
}

/// The launchd plist (macOS): a LaunchAgent (`user`) or a LaunchDaemon run as `service_user`.
/// `log` is where stdout and stderr go.
pub fn launchd(spec: &Spec, log: &Path) -> anyhow::Result<String> {
    let mut args = vec![
        path_xml(&spec.binary)?,
        "--config".into(),
        path_xml(&spec.config)?,
    ];
    match spec.role {
        Role::Proxy => args.extend(["proxy".to_string()]),
        Role::Agent => {
            if spec.state_dir != Path::new("") {
                args.extend(["--state-dir".to_string(), path_xml(&spec.state_dir)?]);
            }
        }
    }
    let mut p = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- Written by `tightwad service install`; `tightwad service uninstall` removes it. -->\n\
         <plist version=\"1.0\">\n<dict>\n",
    );
    p.push_str(&format!(
        "  <key>Label</key>\n  <string>{}</string>\n",
        spec.role.launchd_label()
    ));
    p.push_str("  <key>ProgramArguments</key>\n  <array>\n");
    for a in &args {
        p.push_str(&format!("    <string>{a}</string>\n"));
    }
    p.push_str("  </array>\n");
    if !spec.user {
        p.push_str(&format!(
            "  <key>UserName</key>\n  <string>{}</string>\n",
            xml(&spec.service_user)
        ));
    }
    p.push_str(
        "  <key>EnvironmentVariables</key>\n  <dict>\n    <key>RUST_LOG</key>\n    <string>info</string>\n  </dict>\n\
         \x20 <key>RunAtLoad</key>\n  <true/>\n\
         \x20 <!-- Restarted when it exits with an error, like systemd's Restart=on-failure. -->\n\
         \x20 <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n\
         \x20 <key>ThrottleInterval</key>\n  <integer>5</integer>\n",
    );
    let stop = match spec.role {
        Role::Proxy => 120,
        Role::Agent => 60,
    };
    p.push_str(&format!(
        "  <key>ExitTimeOut</key>\n  <integer>{stop}</integer>\n"
    ));
    let log = path_xml(log)?;
    p.push_str(&format!(
        "  <key>StandardOutPath</key>\n  <string>{log}</string>\n  <key>StandardErrorPath</key>\n  <string>{log}</string>\n"
    ));
    p.push_str("</dict>\n</plist>\n");
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(role: Role, user: bool) -> Spec {
        Spec {
            role,
            user,
            binary: "/opt/tight wad/bin/tightwad-agent".into(),
            config: "/etc/tightwad/agent.toml".into(),
            state_dir: role.system_state_dir().into(),
            writable: vec!["/srv/models".into(), "/home/me/100%models".into()],
            service_user: "tightwad".into(),
        }
    }

    #[test]
    fn agent_unit_sandboxes_but_lets_llama_cpp_run_and_models_be_written() {
        let u = systemd(&spec(Role::Agent, false)).expect("unit");
        for line in [
            "Type=notify",
            "User=tightwad",
            "StateDirectory=tightwad-agent",
            "ExecStart=\"/opt/tight wad/bin/tightwad-agent\" --config /etc/tightwad/agent.toml --state-dir /var/lib/tightwad-agent",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "ReadWritePaths=-/srv/models",
            "ReadWritePaths=-/home/me/100%%models",
            "KillMode=mixed",
            "WantedBy=multi-user.target",
        ] {
            assert!(u.lines().any(|l| l == line), "missing {line:?} in\n{u}");
        }
        for absent in ["PrivateDevices", "MemoryDenyWriteExecute"] {
            assert!(!u.contains(absent), "{absent} would stop llama.cpp:\n{u}");
        }
    }

    #[test]
    fn user_units_have_no_system_directives() {
        let mut s = spec(Role::Proxy, true);
        s.state_dir = PathBuf::new();
        let u = systemd(&s).expect("unit");
        assert!(u.contains("WantedBy=default.target"), "{u}");
        assert!(u.contains("journalctl --user-unit tightwad"), "{u}");
        for absent in ["User=", "ProtectSystem", "StateDirectory"] {
            assert!(!u.contains(absent), "{absent} in a user unit:\n{u}");
        }
    }

    #[test]
    fn unsafe_paths_are_refused_with_the_reason() {
        let mut s = spec(Role::Agent, false);
        s.config = "/etc/\"x\".toml".into();
        let err = systemd(&s).expect_err("quote").to_string();
        assert!(err.contains("cannot go in a systemd unit"), "{err}");
    }

    #[test]
    fn launchd_plist_escapes_and_runs_as_the_user() {
        let mut s = spec(Role::Agent, false);
        s.config = "/Users/me/a&b.toml".into();
        let p = launchd(&s, Path::new("/Library/Logs/tightwad-agent.log")).expect("plist");
        assert!(p.contains("<string>/Users/me/a&amp;b.toml</string>"), "{p}");
        assert!(
            p.contains("<key>UserName</key>\n  <string>tightwad</string>"),
            "{p}"
        );
        assert!(
            p.contains("<string>com.tightwad.tightwad-agent</string>"),
            "{p}"
        );
    }
}
