//! Old spellings that still work (docs/cli-spellings.md has the table; issue 17, item 7). Each
//! renamed flag is a hidden clap alias of its argument, added here from [`RENAMED`] so the table
//! is the one place that knows them; using one prints a one-line deprecation warning on stderr.
//! `bench --json FILE`, from when `--json` took a file, is rewritten to `--json --out FILE`.
//! (The old two-word `HOST NAME` of a process is handled where processes are named,
//! `tightwad_coordinator::fleet::naming`.)

use std::ffi::OsString;

use clap::{ArgMatches, Command};

/// A flag renamed to the one spelling of its concept.
pub struct Renamed {
    /// The subcommand path, e.g. `["init"]`.
    pub command: &'static [&'static str],
    /// The argument's id (its field name).
    pub id: &'static str,
    /// The old long flag, without dashes.
    pub old: &'static str,
    /// The flag to use instead, without dashes.
    pub new: &'static str,
}

/// Every renamed flag of the `tightwad` commands (`tightwad proxy`'s own flags follow the same
/// table in its module).
pub const RENAMED: &[Renamed] = &[
    Renamed {
        command: &["init"],
        id: "target_url",
        old: "target-url",
        new: "target",
    },
    Renamed {
        command: &["init"],
        id: "draft_url",
        old: "draft-url",
        new: "draft",
    },
    Renamed {
        command: &["chat"],
        id: "proxy_url",
        old: "url",
        new: "proxy",
    },
    Renamed {
        command: &["logs"],
        id: "proxy_url",
        old: "url",
        new: "proxy",
    },
    Renamed {
        command: &["build"],
        id: "hosts",
        old: "hosts",
        new: "host",
    },
];

/// `command` with every old spelling of [`RENAMED`] added as a hidden alias.
pub fn with_aliases(mut command: Command) -> Command {
    fn add(command: Command, path: &[&str], id: &'static str, old: &'static str) -> Command {
        match path.split_first() {
            None => command.mut_arg(id, |arg| arg.alias(old)),
            Some((first, rest)) => command.mut_subcommand(*first, |sub| add(sub, rest, id, old)),
        }
    }
    for r in RENAMED {
        command = add(command, r.command, r.id, r.old);
    }
    command
}

/// The subcommand path the user chose, e.g. `["agent", "start"]`.
fn chosen_path(matches: &ArgMatches) -> Vec<String> {
    let mut path = Vec::new();
    let mut at = matches;
    while let Some((name, sub)) = at.subcommand() {
        path.push(name.to_string());
        at = sub;
    }
    path
}

/// The words of the command line before `--` (what follows it belongs to another program).
fn words(argv: &[OsString]) -> impl Iterator<Item = String> + '_ {
    argv.iter()
        .skip(1)
        .map(|w| w.to_string_lossy().into_owned())
        .take_while(|w| w != "--")
}

/// One warning per old spelling used on this command line.
pub fn warnings(matches: &ArgMatches, argv: &[OsString]) -> Vec<String> {
    let path = chosen_path(matches);
    let mut out = Vec::new();
    for r in RENAMED.iter().filter(|r| r.command == path.as_slice()) {
        let flag = format!("--{}", r.old);
        let used = words(argv).any(|w| w == flag || w.starts_with(&format!("{flag}=")));
        if used {
            out.push(format!(
                "`tightwad {} {flag}` is deprecated; use `--{}` (docs/cli-spellings.md)",
                path.join(" "),
                r.new
            ));
        }
    }
    out
}

/// The subcommand word of `argv` (the first word that is not a global option or its value).
fn subcommand_at(argv: &[OsString]) -> Option<usize> {
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].to_string_lossy();
        if word == "-c" || word == "--config" {
            i += 2;
        } else if word.starts_with('-') {
            i += 1;
        } else {
            return Some(i);
        }
    }
    None
}

/// Rewrites `bench --json FILE` (the old spelling) to `bench --json --out FILE`, and
/// `bench --json -` to `bench --json`; returns the new command line and the warnings.
pub fn rewrite(argv: Vec<OsString>) -> (Vec<OsString>, Vec<String>) {
    let Some(at) = subcommand_at(&argv) else {
        return (argv, Vec::new());
    };
    if argv[at] != "bench" {
        return (argv, Vec::new());
    }
    let mut out: Vec<OsString> = argv[..=at].to_vec();
    let mut warnings = Vec::new();
    let mut rest = argv[at + 1..].iter().peekable();
    while let Some(word) = rest.next() {
        let text = word.to_string_lossy();
        if text == "--" {
            out.push(word.clone());
            out.extend(rest.cloned());
            break;
        }
        let value = if text == "--json" {
            match rest.peek() {
                Some(next)
                    if next.to_string_lossy() == "-"
                        || !next.to_string_lossy().starts_with('-') =>
                {
                    rest.next().cloned()
                }
                _ => None,
            }
        } else {
            text.strip_prefix("--json=").map(OsString::from)
        };
        match value {
            None => out.push(word.clone()),
            Some(file) if file == "-" => {
                warnings.push(
                    "`tightwad bench --json -` is deprecated; `--json` alone prints the report on stdout".to_string(),
                );
                out.push("--json".into());
            }
            Some(file) => {
                warnings.push(format!(
                    "`tightwad bench --json {}` is deprecated; use `--json --out {}`",
                    file.to_string_lossy(),
                    file.to_string_lossy()
                ));
                out.push("--json".into());
                out.push("--out".into());
                out.push(file);
            }
        }
    }
    (out, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        std::iter::once("tightwad")
            .chain(words.iter().copied())
            .map(OsString::from)
            .collect()
    }

    /// Every old spelling is an alias of an argument that exists under its new name, and parses.
    #[test]
    fn every_renamed_flag_is_a_hidden_alias_of_its_new_spelling() {
        let command = with_aliases(<crate::Cli as clap::CommandFactory>::command());
        for r in RENAMED {
            let mut at = &command;
            for name in r.command {
                at = at
                    .find_subcommand(name)
                    .unwrap_or_else(|| panic!("no subcommand {name}"));
            }
            let arg = at
                .get_arguments()
                .find(|a| a.get_id() == r.id)
                .unwrap_or_else(|| panic!("{:?} has no argument {}", r.command, r.id));
            assert_eq!(arg.get_long(), Some(r.new), "{:?} {}", r.command, r.id);
            assert!(
                arg.get_all_aliases().is_some_and(|a| a.contains(&r.old)),
                "{} is not an alias of --{}",
                r.old,
                r.new
            );
            assert!(
                !arg.get_visible_aliases()
                    .is_some_and(|a| a.contains(&r.old)),
                "{} must stay hidden",
                r.old
            );
        }
    }

    #[test]
    fn old_spellings_parse_and_warn_new_ones_do_not() {
        let command = with_aliases(<crate::Cli as clap::CommandFactory>::command());
        let old = argv(&[
            "init",
            "--target-url",
            "http://a:1",
            "--draft-url=http://b:2",
        ]);
        let matches = command.clone().try_get_matches_from(&old).expect("parses");
        let warned = warnings(&matches, &old);
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[0].contains("--target-url") && warned[0].contains("`--target`"));
        let new = argv(&["init", "--target", "http://a:1"]);
        let matches = command.try_get_matches_from(&new).expect("parses");
        assert!(warnings(&matches, &new).is_empty());
    }

    #[test]
    fn bench_json_file_becomes_json_out_file() {
        let (args, warned) = rewrite(argv(&[
            "-c", "x.toml", "bench", "--json", "r.json", "--proxy", "http://p",
        ]));
        assert_eq!(
            args,
            argv(&["-c", "x.toml", "bench", "--json", "--out", "r.json", "--proxy", "http://p"])
        );
        assert_eq!(warned.len(), 1);
        let (args, warned) = rewrite(argv(&["bench", "--json", "-"]));
        assert_eq!(args, argv(&["bench", "--json"]));
        assert_eq!(warned.len(), 1);
        let (args, warned) = rewrite(argv(&["bench", "--json", "--proxy", "http://p"]));
        assert_eq!(args, argv(&["bench", "--json", "--proxy", "http://p"]));
        assert!(warned.is_empty());
        let (args, _) = rewrite(argv(&["chat", "--json", "x"]));
        assert_eq!(
            args,
            argv(&["chat", "--json", "x"]),
            "only bench is rewritten"
        );
    }
}
