//! How `tightwad-agent` layers agent.toml (issue 17 item 8), with the real binary: the file, then
//! `TIGHTWAD_AGENT_<KEY>` variables, then the flags, each over the one before for the same key
//! (before, no variable set a key); a mistake is named where it was made. `--print-fingerprint`
//! shows which `state_dir` won: the agent creates its identity there, prints it and exits.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tightwad-agent");

/// `tightwad-agent ARGS` in `dir` with `env` and no other `TIGHTWAD_*` variable of the caller's.
fn agent(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TIGHTWAD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("tightwad-agent runs")
}

fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

#[test]
fn a_variable_overrides_the_file_and_a_flag_the_variable() {
    let dir = tempfile::tempdir().expect("dir");
    let (from_file, from_env, from_flag) = (
        dir.path().join("from-file"),
        dir.path().join("from-env"),
        dir.path().join("from-flag"),
    );
    std::fs::write(
        dir.path().join("agent.toml"),
        format!("state_dir = {:?}\n", from_file.display().to_string()),
    )
    .expect("config");
    let env_dir = from_env.display().to_string();
    let env = [("TIGHTWAD_AGENT_STATE_DIR", env_dir.as_str())];
    let args = ["--config", "agent.toml", "--print-fingerprint"];

    let out = agent(dir.path(), &args, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_files(&from_env) && !has_files(&from_file));

    let flag_dir = from_flag.display().to_string();
    let out = agent(
        dir.path(),
        &[&args[..], &["--state-dir", &flag_dir]].concat(),
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_files(&from_flag) && !has_files(&from_file));
}

#[test]
fn a_mistake_is_named_where_it_was_made() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state").display().to_string();
    std::fs::write(
        dir.path().join("agent.toml"),
        "stop_grace_s = 3\n\nready_timeout_s = \"soon\"\n",
    )
    .expect("config");
    let args = ["--config", "agent.toml", "--print-fingerprint"];
    let out = agent(dir.path(), &args, &[("TIGHTWAD_AGENT_STATE_DIR", &state)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("agent.toml") && stderr.contains("line 3"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("agent.toml"), "stop_grace_s = 3\n").expect("config");
    let out = agent(
        dir.path(),
        &args,
        &[
            ("TIGHTWAD_AGENT_STATE_DIR", &state),
            ("TIGHTWAD_AGENT_LISTEN", "nowhere"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("TIGHTWAD_AGENT_LISTEN: listen:"),
        "{stderr}"
    );
}
