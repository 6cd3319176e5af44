//! The JSON Schemas of both config files (issue 17 item 8), shipped in `dist/schema/` so editors
//! validate `tightwad.toml` and `agent.toml` as they are typed: the shipped files are exactly what
//! the binaries print from the types that read the files, and every example config the project
//! ships validates against them, while a typo does not.

use std::path::{Path, PathBuf};

use tightwad_e2e::proxy_process::run_tightwad;
use tightwad_e2e::test_env::workspace_binary;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn validator(schema_file: &str) -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&read(schema_file)).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// The TOML file as the JSON value a schema-aware editor checks.
fn as_json(text: &str) -> serde_json::Value {
    toml::from_str(text).expect("TOML")
}

fn errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_shipped_schemas_are_what_the_binaries_print() {
    let dir = tempfile::tempdir().expect("dir");
    let printed = run_tightwad(dir.path(), &["config", "schema"], &[]);
    assert!(printed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&printed.stdout),
        read("dist/schema/tightwad.schema.json"),
        "dist/schema/tightwad.schema.json is stale: regenerate it with `tightwad config schema > dist/schema/tightwad.schema.json`"
    );
    assert_eq!(
        tightwad_serve::config::schema::proxy_schema_json(),
        read("dist/schema/tightwad.schema.json")
    );
    let agent =
        std::process::Command::new(workspace_binary("tightwad-agent", "TIGHTWAD_AGENT_BIN"))
            .arg("--print-schema")
            .output()
            .expect("tightwad-agent runs");
    assert!(agent.status.success());
    assert_eq!(
        String::from_utf8_lossy(&agent.stdout),
        read("dist/schema/agent.schema.json"),
        "dist/schema/agent.schema.json is stale: regenerate it with `tightwad-agent --print-schema > dist/schema/agent.schema.json`"
    );
}

#[test]
fn every_shipped_example_config_validates_and_a_typo_does_not() {
    let proxy = validator("dist/schema/tightwad.schema.json");
    let agent = validator("dist/schema/agent.schema.json");
    for (validator, file) in [
        (&proxy, "dist/tightwad.example.toml"),
        (&agent, "dist/agent.toml"),
        (&agent, "agent/agent.example.toml"),
    ] {
        let found = errors(validator, &as_json(&read(file)));
        assert!(found.is_empty(), "{file}: {found:?}");
    }
    // What the proxy refuses, the editor marks too: an unknown key, a k above 8, a bad kind.
    for bad in [
        "[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokns = 3\n",
        "[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokens = 12\n",
        "[[pairings]]\ntarget = \"http://a:1\"\ntarget_kind = \"ollama\"\n",
        "[[pairings]]\ndraft = \"http://a:1\"\n",
    ] {
        assert!(
            !errors(&proxy, &as_json(bad)).is_empty(),
            "the schema let through:\n{bad}"
        );
    }
    for bad in [
        "[[process]]\nname = \"t\"\nkind = \"llama-sever\"\n",
        "ready_timeout_s = \"soon\"\n",
        "discovery = \"yes\"\n",
    ] {
        assert!(
            !errors(&agent, &as_json(bad)).is_empty(),
            "the schema let through:\n{bad}"
        );
    }
    // Both spellings of `discovery` pass.
    for good in [
        "discovery = true\n",
        "[discovery]\ninterfaces = [\"eth0\"]\n",
    ] {
        let found = errors(&agent, &as_json(good));
        assert!(found.is_empty(), "{good}: {found:?}");
    }
}
