//! The README's fault table promises "each row is a test": every row names at least one test as
//! `file::function`, and every named test exists (in `tests/tests/FILE.rs`, or `serve/tests/FILE.rs`).
//! A row whose test is renamed or removed, or a new row without one, fails here.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The table's rows (after the header and the separator) under the README's fault heading.
fn fault_rows(readme: &str) -> Vec<String> {
    let section = readme
        .split("## Faults and bad input")
        .nth(1)
        .expect("the README has its fault table");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(str::to_string)
        .collect()
}

/// The `file::function` names in a row's last cell.
fn named_tests(row: &str) -> Vec<(String, String)> {
    let cell = row
        .trim_end_matches('|')
        .rsplit('|')
        .next()
        .unwrap_or_default();
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|code| code.split_once("::"))
        .map(|(file, function)| (file.to_string(), function.to_string()))
        .collect()
}

#[test]
fn every_row_of_the_readme_fault_table_names_a_test_that_exists() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let rows = fault_rows(&readme);
    assert!(
        rows.len() > 20,
        "the fault table has only {} rows",
        rows.len()
    );
    for row in &rows {
        let tests = named_tests(row);
        assert!(
            !tests.is_empty(),
            "this fault-table row names no test (file::function): {row}"
        );
        for (file, function) in tests {
            let source = ["tests/tests", "serve/tests"]
                .iter()
                .find_map(|dir| {
                    std::fs::read_to_string(root.join(dir).join(format!("{file}.rs"))).ok()
                })
                .unwrap_or_else(|| panic!("no test file {file}.rs for the row: {row}"));
            assert!(
                source.contains(&format!("fn {function}(")),
                "{file}.rs has no test {function}, named by the row: {row}"
            );
        }
    }
}
