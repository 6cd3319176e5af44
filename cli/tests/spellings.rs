//! One spelling per concept (docs/cli-spellings.md): every command's `--help`, walked through the
//! command tree the binary prints, gives every argument help text, shows no old spelling of the
//! table, names processes as HOST/NAME; the old spellings still work and warn.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

/// `tightwad PATH… --help`.
fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .output()
        .expect("tightwad runs");
    assert!(out.status.success(), "tightwad {path:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// One argument of a help page: its spelling (`-n, --tail <TAIL>`) and whether it says what it
/// is for (a line other than clap's `[default: …]`, `[env: …]`, `[possible values: …]`).
#[derive(Debug)]
struct Entry {
    spec: String,
    has_help: bool,
}

/// A help page's subcommands and arguments (clap's layout: section headers at column 0, entries
/// indented less than their help text).
fn parse(page: &str) -> (Vec<String>, Vec<Entry>) {
    let mut section = "";
    let mut commands = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let explains = |text: &str| {
        let t = text.trim();
        !t.is_empty() && !t.starts_with('[')
    };
    for line in page.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() {
            continue;
        }
        match section {
            "Commands:" if indent == 2 => {
                let name = body.split_whitespace().next().unwrap_or_default();
                if name != "help" {
                    commands.push(name.to_string());
                }
            }
            "Arguments:" | "Options:" => {
                let starts_entry = indent < 10
                    && (body.starts_with('-') || body.starts_with('<') || body.starts_with('['));
                if starts_entry {
                    // Same-line layout: `--flag <V>  help`; next-line layout: help below.
                    let (spec, inline) = match body.find("  ") {
                        Some(i) => (&body[..i], &body[i..]),
                        None => (body, ""),
                    };
                    entries.push(Entry {
                        spec: spec.to_string(),
                        has_help: explains(inline),
                    });
                } else if let Some(last) = entries.last_mut() {
                    last.has_help |= explains(body);
                }
            }
            _ => {}
        }
    }
    (commands, entries)
}

/// The old flag spellings of docs/cli-spellings.md's table (its "Old spelling" column).
fn old_flags_from_the_table() -> BTreeSet<String> {
    let table = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/cli-spellings.md"
    ))
    .expect("docs/cli-spellings.md");
    let mut old = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let Some(cell) = row.split(" | ").nth(2) else {
            continue;
        };
        for code in cell.split('`').skip(1).step_by(2) {
            if let Some(flag) = code
                .split_whitespace()
                .next()
                .filter(|f| f.starts_with("--"))
            {
                old.insert(flag.to_string());
            }
        }
    }
    old
}

#[test]
fn every_argument_has_help_and_no_command_spells_a_concept_the_old_way() {
    let old = old_flags_from_the_table();
    for flag in ["--target-url", "--url", "--hosts", "--model-name"] {
        assert!(old.contains(flag), "the table lists {flag}: {old:?}");
    }
    let mut no_help = Vec::new();
    let mut old_spelled = Vec::new();
    let mut two_word_processes = Vec::new();
    let mut no_defaults_shown = Vec::new();
    let mut visited = 0;
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(path) = queue.pop() {
        let page = help(&path);
        visited += 1;
        let (commands, entries) = parse(&page);
        let name = path.join(" ");
        for entry in &entries {
            if !entry.has_help {
                no_help.push(format!("tightwad {name}: {}", entry.spec));
            }
            for flag in entry.spec.split([',', ' ']).filter(|w| w.starts_with("--")) {
                if old.contains(flag) {
                    old_spelled.push(format!("tightwad {name}: {flag}"));
                }
            }
        }
        let positionals: Vec<&str> = entries
            .iter()
            .map(|e| e.spec.as_str())
            .filter(|s| s.starts_with('<') || s.starts_with('['))
            .collect();
        if positionals.contains(&"<HOST>") && positionals.contains(&"<NAME>") {
            two_word_processes.push(name.clone());
        }
        if page.contains("--draft-tokens <") && !page.contains("[default:") && name != "proxy" {
            no_defaults_shown.push(name.clone());
        }
        for sub in commands {
            let mut next = path.clone();
            next.push(sub);
            queue.push(next);
        }
    }
    assert!(visited > 30, "walked only {visited} help pages");
    assert!(
        no_help.is_empty(),
        "arguments without help text: {no_help:#?}"
    );
    assert!(
        old_spelled.is_empty(),
        "old spellings (docs/cli-spellings.md) still shown: {old_spelled:#?}"
    );
    assert!(
        two_word_processes.is_empty(),
        "commands naming a process HOST NAME instead of HOST/NAME: {two_word_processes:?}"
    );
    assert!(no_defaults_shown.is_empty(), "{no_defaults_shown:?}");
    // Defaults are part of --help.
    assert!(help(&["agent".into(), "logs".into()]).contains("[default: 100]"));
    assert!(help(&["init".into()]).contains("[default: 127.0.0.1:8088]"));
}

#[test]
fn old_spellings_still_work_and_say_what_to_write_instead() {
    let sandbox = Sandbox::new("spellings");
    let dir = &sandbox.dir;
    let config = dir.join("tightwad.toml");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .args([
            "init",
            "--target-url",
            "http://10.0.0.2:8080",
            "--draft-url=http://10.0.0.3:8081",
        ])
        .output()
        .expect("init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].contains("--target-url") && warnings[0].contains("use `--target`"),
        "{stderr}"
    );
    let written = tightwad_serve::config::ProxyConfig::load(&config).expect("loads");
    assert_eq!(written.pairings[0].target, "http://10.0.0.2:8080");
    assert_eq!(
        written.pairings[0].draft.as_deref(),
        Some("http://10.0.0.3:8081")
    );

    // The new spelling: the same file, no warning.
    let again = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .args([
            "init",
            "--force",
            "--target",
            "http://10.0.0.2:8080",
            "--draft",
            "http://10.0.0.3:8081",
        ])
        .output()
        .expect("init runs");
    assert!(again.status.success());
    assert!(
        !String::from_utf8_lossy(&again.stderr).contains("warning"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // `logs proxy --url`: parsed as --proxy (the warning, then the unreachable proxy's error
    // naming the URL that was given).
    let port = free_port();
    let logs = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .args([
            "logs",
            "proxy",
            "--url",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("HOME", dir)
        .output()
        .expect("logs runs");
    let stderr = String::from_utf8_lossy(&logs.stderr);
    assert!(!logs.status.success());
    assert!(
        stderr.contains("warning: `tightwad logs --url` is deprecated; use `--proxy`"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    sandbox.remove();
}
