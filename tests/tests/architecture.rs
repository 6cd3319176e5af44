//! The workspace's architecture, checked: which crate may depend on which (from `cargo metadata`),
//! and no import cycle between the top-level modules of any crate (from the sources).
//!
//! The rules (the layout's invariants: arrows between crates go one way):
//! - `tightwad-protocol` depends on no other workspace crate;
//! - `tightwad-placement` only on `tightwad-protocol`;
//! - the agent never imports coordinator or serving code: `tightwad-agent` does not reach
//!   `tightwad-serve`, `tightwad-coordinator` or `tightwad`, not even through its dev-dependencies;
//! - `tightwad-serve` (the serving library) knows nothing of the fleet: it does not reach
//!   `tightwad-coordinator`, `tightwad-agent`, `tightwad-protocol` or `tightwad-placement`;
//! - `tightwad-coordinator` does not reach `tightwad-agent`.
//!
//! "Reach" is a direct dependency of any kind (normal, dev, build), then that crate's normal
//! dependencies, transitively: a rule cannot be dodged through a crate in between.
//!
//! Needs nothing but `cargo` and the sources: no servers, no root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// One workspace package: its direct workspace dependencies by kind, and its targets' root files.
struct Package {
    /// (dependency, kind: "normal", "dev" or "build")
    deps: Vec<(String, String)>,
    /// Root files of its lib and bin targets.
    roots: Vec<PathBuf>,
}

fn workspace_packages() -> BTreeMap<String, Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(workspace_root().join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                .filter_map(|d| {
                    let name = d["name"].as_str()?.to_string();
                    let kind = d["kind"].as_str().unwrap_or("normal").to_string();
                    names.contains(&name).then_some((name, kind))
                })
                .collect();
            let roots = p["targets"]
                .as_array()
                .expect("targets")
                .iter()
                .filter(|t| {
                    t["kind"].as_array().is_some_and(|k| {
                        k.iter()
                            .any(|k| matches!(k.as_str(), Some("lib" | "rlib" | "bin")))
                    })
                })
                .filter_map(|t| t["src_path"].as_str().map(PathBuf::from))
                .collect();
            (
                p["name"].as_str().expect("name").to_string(),
                Package { deps, roots },
            )
        })
        .collect()
}

/// The workspace crates `name` reaches: its direct dependencies of every kind, then their normal
/// dependencies, transitively. Each with the chain that reaches it.
fn reaches(packages: &BTreeMap<String, Package>, name: &str) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut todo: Vec<(String, String)> = packages[name]
        .deps
        .iter()
        .map(|(d, kind)| (d.clone(), format!("{name} -({kind})-> {d}")))
        .collect();
    while let Some((dep, chain)) = todo.pop() {
        if found.contains_key(&dep) {
            continue;
        }
        for (next, kind) in &packages[&dep].deps {
            if kind == "normal" {
                todo.push((next.clone(), format!("{chain} -> {next}")));
            }
        }
        found.insert(dep, chain);
    }
    found
}

#[test]
fn crates_depend_one_way() {
    let packages = workspace_packages();
    let workspace: Vec<&str> = packages.keys().map(String::as_str).collect();
    let others =
        |me: &str| -> Vec<&str> { workspace.iter().copied().filter(|p| *p != me).collect() };
    // (crate, crates it must not reach, why)
    let rules: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "tightwad-protocol",
            others("tightwad-protocol"),
            "the protocol knows no coordinator, agent or server",
        ),
        (
            "tightwad-placement",
            others("tightwad-placement")
                .into_iter()
                .filter(|p| *p != "tightwad-protocol")
                .collect(),
            "the placement planner builds on the protocol's types only",
        ),
        (
            "tightwad-agent",
            vec!["tightwad-serve", "tightwad-coordinator", "tightwad"],
            "the agent never imports coordinator or serving code (tests included)",
        ),
        (
            "tightwad-serve",
            vec![
                "tightwad-coordinator",
                "tightwad-agent",
                "tightwad-protocol",
                "tightwad-placement",
            ],
            "the serving library never imports fleet code",
        ),
        (
            "tightwad-coordinator",
            vec!["tightwad-agent"],
            "the coordinator talks to agents over the protocol only",
        ),
    ];
    let mut broken = Vec::new();
    for (name, forbidden, why) in rules {
        assert!(packages.contains_key(name), "no workspace crate {name}");
        let reached = reaches(&packages, name);
        for f in forbidden {
            if let Some(chain) = reached.get(f) {
                broken.push(format!("{chain} ({why})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "forbidden dependencies:\n{}",
        broken.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Import cycles between top-level modules.
//
// The parser is deliberately simple:
// 1. Comments, string literals (raw ones included) and char literals are blanked out, so only code
//    is read.
// 2. `#[cfg(test)]` items (`mod tests { use super::*; … }`) are cut out: a test module's `super`
//    is its own parent, and test code is not the architecture.
// 3. A crate root's top-level modules are its `mod NAME;` declarations; module NAME's files are
//    `NAME.rs`, `NAME/mod.rs` and everything under `NAME/` next to the root.
// 4. An edge A → B is a path `crate::B…`, `crate::{B…, …}`, or `super::…` that climbs from a file
//    of A up to the crate root and names B (also `crate::Item` where the root re-exports `Item`
//    from B with `pub use B::…`). Glob imports of the root (`crate::*`) name no module.
// 5. Every strongly connected component of more than one module is a cycle, reported with one
//    file that makes each of its edges.
// ---------------------------------------------------------------------------------------------

/// `text` with comments, strings and char literals replaced by spaces (newlines kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, s: &[u8]| {
        out.extend(s.iter().map(|&c| if c == b'\n' { b'\n' } else { b' ' }));
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let (mut depth, mut j) = (0usize, 0);
            while j < rest.len() {
                if rest[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if (rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br"))
            && (i == 0 || !is_ident(b[i - 1]))
        {
            // Raw string: r#*"…"#*
            let start = if rest[0] == b'b' { 2 } else { 1 };
            let hashes = rest[start..].iter().take_while(|&&c| c == b'#').count();
            if rest.get(start + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = start + hashes + 1;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): blank only the former.
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..].iter().position(|&c| c == b'\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&b'\'') {
                Some(3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut out, &rest[..end]);
                    i += end;
                }
                None => {
                    out.push(b'\'');
                    i += 1;
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `code` without its `#[cfg(test)]` items: through the matching `}` or `;`, or — for a test-only
/// match arm, enum variant or field — the `,` or enclosing `}` that ends it.
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    end = i;
                    break;
                }
                ',' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        out.extend(
            item[..end]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' }),
        );
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The identifiers right after `prefix` (`crate::`), one per path: `crate::a::b` gives `a`,
/// `crate::{a, b::c}` gives `a` and `b`; `*` gives nothing.
fn names_after(code: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(pos) = code[from..].find(prefix) {
        let at = from + pos;
        from = at + prefix.len();
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let after = code[from..].trim_start();
        if let Some(group) = after.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut word = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => word.push(c),
                    _ if item_start && !word.is_empty() => {
                        names.push(std::mem::take(&mut word));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !word.is_empty() {
                names.push(word);
            }
        } else {
            let word: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                names.push(word);
            }
        }
    }
    names
}

/// A crate's top-level modules: name → (files, module depth of each file below the root).
struct CrateModules {
    root: PathBuf,
    modules: BTreeMap<String, Vec<(PathBuf, usize)>>,
    /// Names the root re-exports (`pub use module::Name`) → that module.
    reexports: BTreeMap<String, String>,
}

fn rust_files(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, usize)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, depth + 1, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            // dir/mod.rs is the module `dir` itself; dir/x.rs is one level below it.
            let d = if path.file_name().is_some_and(|n| n == "mod.rs") {
                depth
            } else {
                depth + 1
            };
            out.push((path, d));
        }
    }
}

fn crate_modules(root: &Path) -> CrateModules {
    let code = without_test_items(&code_only(&std::fs::read_to_string(root).expect("root")));
    let dir = root.parent().expect("root folder");
    let mut modules = BTreeMap::new();
    for line in code.lines() {
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ';'))
            .filter(|w| !w.is_empty())
            .collect();
        // `mod name;` / `pub mod name;` / `pub(crate) mod name;`
        if let Some(i) = words.iter().position(|w| *w == "mod") {
            if let Some(name) = words.get(i + 1).and_then(|w| w.strip_suffix(';')) {
                // NAME.rs and NAME/mod.rs are the module itself (one `super` from the root);
                // NAME/x.rs is one level deeper, and so on.
                let mut files = Vec::new();
                let file = dir.join(format!("{name}.rs"));
                if file.is_file() {
                    files.push((file, 1));
                }
                rust_files(&dir.join(name), 1, &mut files);
                modules.insert(name.to_string(), files);
            }
        }
    }
    let mut reexports = BTreeMap::new();
    for statement in code.split(';') {
        let s = statement.trim();
        let Some(path) = s.strip_prefix("pub use ") else {
            continue;
        };
        let path = path
            .trim()
            .trim_start_matches("self::")
            .trim_start_matches("crate::");
        let module: String = path
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !modules.contains_key(&module) {
            continue;
        }
        // The names it brings in: the last identifier of each item (or its `as` alias).
        for item in path.split([',', '{', '}']) {
            let last = item.split_whitespace().last().unwrap_or("");
            let name = last.rsplit("::").next().unwrap_or("");
            if !name.is_empty() && name != "*" && name != module {
                reexports.insert(name.to_string(), module.clone());
            }
        }
    }
    CrateModules {
        root: root.to_path_buf(),
        modules,
        reexports,
    }
}

/// Edges between top-level modules: (from, to) → a file that makes the edge.
fn module_edges(krate: &CrateModules) -> BTreeMap<(String, String), PathBuf> {
    let mut edges = BTreeMap::new();
    for (module, files) in &krate.modules {
        for (file, depth) in files {
            let code =
                without_test_items(&code_only(&std::fs::read_to_string(file).expect("source")));
            let mut targets = names_after(&code, "crate::");
            // `super::` climbed `depth` times from this file reaches the crate root.
            let supers = "super::".repeat(*depth);
            targets.extend(names_after(&code, &supers));
            for target in targets {
                let target = if krate.modules.contains_key(&target) {
                    target
                } else if let Some(m) = krate.reexports.get(&target) {
                    m.clone()
                } else {
                    continue;
                };
                if &target != module {
                    edges
                        .entry((module.clone(), target))
                        .or_insert_with(|| file.clone());
                }
            }
        }
    }
    edges
}

/// Strongly connected components of more than one node (Tarjan).
fn cycles(nodes: &[String], edges: &BTreeMap<(String, String), PathBuf>) -> Vec<Vec<String>> {
    struct State<'a> {
        nodes: &'a [String],
        adj: BTreeMap<&'a str, Vec<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.adj.get(v).cloned().unwrap_or_default() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        adj.entry(a.as_str()).or_default().push(b.as_str());
    }
    let mut state = State {
        nodes,
        adj,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in state.nodes {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let root = workspace_root();
    let mut report = Vec::new();
    for (name, package) in workspace_packages() {
        for target_root in &package.roots {
            let krate = crate_modules(target_root);
            let edges = module_edges(&krate);
            let nodes: Vec<String> = krate.modules.keys().cloned().collect();
            for cycle in cycles(&nodes, &edges) {
                let members: BTreeSet<&String> = cycle.iter().collect();
                let evidence: Vec<String> = edges
                    .iter()
                    .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                    .map(|((a, b), file)| {
                        let file = file.strip_prefix(&root).unwrap_or(file);
                        format!("    {a} -> {b} ({})", file.display())
                    })
                    .collect();
                let krate_root = krate.root.strip_prefix(&root).unwrap_or(&krate.root);
                report.push(format!(
                    "{name} ({}): {}\n{}",
                    krate_root.display(),
                    cycle.join(" <-> "),
                    evidence.join("\n")
                ));
            }
        }
    }
    assert!(
        report.is_empty(),
        "import cycles between top-level modules:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_parser_sees_paths_and_skips_comments_strings_and_tests() {
    let code = code_only(
        "use crate::a::X; // crate::b\nlet s = \"crate::c\"; let r = r#\"crate::d\"#;\nuse crate::{e::Y, f};\n#[cfg(test)]\nmod tests { use crate::g; }\nfn x<'a>(c: char) { super::h::z(); let _ = '{'; }",
    );
    let code = without_test_items(&code);
    assert_eq!(names_after(&code, "crate::"), ["a", "e", "f"]);
    assert_eq!(names_after(&code, "super::"), ["h"]);
}
