use super::*;

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("t.toml");
    std::fs::write(&path, text).expect("write");
    path
}

fn vars(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<Vec<_>>()
        .into_iter()
}

#[test]
fn environment_variables_override_file_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "max_body_bytes = 10\n[[pairings]]\ntarget = \"http://a:1\"\n",
    );
    let c = ProxyConfig::load_with_env(
        &path,
        vars(&[
            ("TIGHTWAD_MAX_BODY_BYTES", "2048"),
            ("TIGHTWAD_PAIRING_DRAFT", "http://b:2"),
            ("TIGHTWAD_PAIRING_ADAPTIVE", "false"),
            ("UNRELATED", "x"),
        ]),
    )
    .expect("loads");
    assert_eq!(c.max_body_bytes, 2048);
    assert_eq!(c.pairings[0].target, "http://a:1");
    assert_eq!(c.pairings[0].draft.as_deref(), Some("http://b:2"));
    assert!(!c.pairings[0].adaptive);
    let e = ProxyConfig::load_with_env(&path, vars(&[("TIGHTWAD_MAX_BODY_BYTES", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TIGHTWAD_MAX_BODY_BYTES") && e.contains("max_body_bytes"),
        "{e}"
    );
}

/// Before, the environment was read only with `-c FILE`: `TIGHTWAD_PAIRING_DRAFT_TOKENS` and
/// friends were silently dropped without a file.
#[test]
fn the_environment_alone_describes_a_pairing_without_a_file() {
    let loaded = ProxyConfig::load_layered(
        None,
        vars(&[
            ("TIGHTWAD_PAIRING_TARGET", "http://a:1"),
            ("TIGHTWAD_PAIRING_DRAFT_TOKENS", "6"),
            ("TIGHTWAD_PAIRING_ALIASES", "[\"gpt-4o\"]"),
            ("TIGHTWAD_PAIRING_DRAFT_TOKNS", "5"),
        ]),
    )
    .expect("loads");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("TIGHTWAD_PAIRING_DRAFT_TOKNS is not a pairing key")),
        "{:?}",
        loaded.warnings
    );
    let p = &loaded.config.pairings[0];
    assert_eq!((p.target.as_str(), p.draft_tokens), ("http://a:1", 6));
    assert_eq!(p.aliases, vec!["gpt-4o".to_string()]);
    let whole = ProxyConfig::load_layered(
        None,
        vars(&[(
            "TIGHTWAD_PAIRINGS",
            "[{target = \"http://a:1\"}, {name = \"b\", target = \"http://b:2\"}]",
        )]),
    )
    .expect("loads");
    assert_eq!(whole.config.pairings.len(), 2);
}

/// Before, any override re-read the merged values and a mistake in the file lost its line.
#[test]
fn a_file_error_keeps_its_line_when_the_environment_overrides_another_key() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokens = \"four\"\n",
    );
    let e = ProxyConfig::load_with_env(&path, vars(&[("TIGHTWAD_MAX_BODY_BYTES", "2048")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml") && e.contains("draft_tokens") && e.contains("line 5"),
        "{e}"
    );
}

#[test]
fn a_pairing_variable_with_several_pairings_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[pairings]]\nname = \"a\"\ntarget = \"http://a:1\"\n[[pairings]]\nname = \"b\"\ntarget = \"http://b:2\"\n",
    );
    let e = ProxyConfig::load_with_env(&path, vars(&[("TIGHTWAD_PAIRING_DRAFT_TOKENS", "6")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TIGHTWAD_PAIRING_DRAFT_TOKENS") && e.contains("2 pairings"),
        "{e}"
    );
}

#[test]
fn flags_change_only_the_fields_they_name_on_the_single_pairing() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\ndraft_tokens = 6\n",
    );
    // `--target` alone keeps the file's draft (before, it dropped it).
    let flags = FlagOverrides {
        target: Some("http://c:3".into()),
        ..Default::default()
    };
    let c = ProxyConfig::resolve(Some(&path), std::iter::empty(), &flags)
        .expect("resolves")
        .config;
    let p = &c.pairings[0];
    assert_eq!(
        (p.target.as_str(), p.draft.as_deref(), p.draft_tokens),
        ("http://c:3", Some("http://b:2"), 6)
    );
    // `--draft` sets the file's pairing's draft (before, it was ignored).
    let flags = FlagOverrides {
        draft: Some("http://d:4".into()),
        ..Default::default()
    };
    let c = ProxyConfig::resolve(Some(&path), std::iter::empty(), &flags)
        .expect("resolves")
        .config;
    assert_eq!(c.pairings[0].draft.as_deref(), Some("http://d:4"));
    assert_eq!(c.pairings[0].target, "http://a:1");
}

#[test]
fn a_pairing_flag_with_several_pairings_is_refused_naming_them() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[pairings]]\nname = \"a\"\ntarget = \"http://a:1\"\n[[pairings]]\nname = \"b\"\ntarget = \"http://b:2\"\n",
    );
    let flags = FlagOverrides {
        draft: Some("http://d:4".into()),
        ..Default::default()
    };
    let e = ProxyConfig::resolve(Some(&path), std::iter::empty(), &flags)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--draft") && e.contains("(a, b)") && e.contains("t.toml"),
        "{e}"
    );
    // Flags that are not a pairing's still apply.
    let flags = FlagOverrides {
        listen: Some("127.0.0.1:9".parse().expect("address")),
        ..Default::default()
    };
    let c = ProxyConfig::resolve(Some(&path), std::iter::empty(), &flags).expect("resolves");
    assert_eq!(c.config.listen.port(), 9);
}

#[test]
fn file_errors_name_the_key_the_file_and_the_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokns = 3\n",
    );
    let e = ProxyConfig::load_with_env(&path, std::iter::empty())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml") && e.contains("draft_tokns") && e.contains("line 5"),
        "{e}"
    );
}

#[test]
fn old_spellings_are_read_and_warned_about_with_file_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = write(
        &dir,
        "[[pairings]]\ntarget = \"http://a:1\"\ntarget_kind = \"llamacpp\"\ntarget_timeout_secs = 7\n",
    );
    let loaded = ProxyConfig::load_layered(Some(&path), std::iter::empty()).expect("loads");
    let p = &loaded.config.pairings[0];
    assert_eq!(p.target_kind, crate::backend::BackendKind::Llamacpp);
    assert_eq!(p.target_timeout_s, 7);
    let all = loaded.warnings.join("\n");
    assert!(
        all.contains("t.toml:3: target_kind = \"llamacpp\" is deprecated; use target_kind = \"llama-server\""),
        "{all}"
    );
    assert!(
        all.contains("t.toml:4") && all.contains("target_timeout_s"),
        "{all}"
    );
}

#[test]
fn drafts_add_draft_servers_after_draft_and_are_checked() {
    let c: ProxyConfig = toml::from_str(
        "[[pairings]]\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\ndrafts = [\"http://c:3\"]\n",
    )
    .expect("valid config");
    c.validate().expect("valid");
    let pc = c.pairings[0].to_pairing_config(0);
    assert_eq!(pc.draft_url.as_deref(), Some("http://b:2"));
    assert_eq!(pc.drafts, vec!["http://c:3".to_string()]);
    let bad: ProxyConfig =
        toml::from_str("[[pairings]]\ntarget = \"http://a:1\"\ndrafts = [\"c:3\"]\n")
            .expect("parses");
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("drafts") && e.contains("c:3"), "{e}");
    let e = toml::from_str::<ProxyConfig>(
        "[[pairings]]\ntarget = \"http://a:1\"\ndrafts = \"http://c:3\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("drafts") && e.contains("line 3"), "{e}");
}

#[test]
fn a_model_name_or_alias_picks_one_pairing_only() {
    let c: ProxyConfig = toml::from_str(
        "[[pairings]]\nname = \"a\"\naliases = [\"x\"]\ntarget = \"http://a:1\"\n[[pairings]]\nname = \"b\"\naliases = [\"x\"]\ntarget = \"http://b:2\"\n",
    )
    .expect("parses");
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("\"x\""), "{e}");
}

#[test]
fn settings_that_cannot_act_are_named_in_the_advice() {
    let c: ProxyConfig = toml::from_str(
        "listen = \"0.0.0.0:8088\"\n[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\nadaptive = false\ndisable_above_tok_s = 40\n[[pairings]]\nname = \"n\"\ntarget = \"http://b:1\"\nmoe = true\n",
    )
    .expect("parses");
    let advice = c.advice().join("\n");
    assert!(
        advice.contains("NO API KEYS") && advice.contains("0.0.0.0:8088"),
        "{advice}"
    );
    assert!(
        advice.contains("disable_above_tok_s = 40 has no effect"),
        "{advice}"
    );
    assert!(
        advice.contains("moe = true has no effect at draft_tokens = 4"),
        "{advice}"
    );
    let quiet: ProxyConfig = toml::from_str(
        "api_keys = [\"k\"]\nlisten = \"0.0.0.0:8088\"\n[[pairings]]\ntarget = \"http://a:1\"\nmoe = true\ndraft_tokens = 8\ndisable_above_tok_s = 40\n",
    )
    .expect("parses");
    assert_eq!(quiet.advice(), Vec::<String>::new());
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let e = toml::from_str::<ProxyConfig>("listen = \"127.0.0.1:1\"\nlisten_port = 3\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("listen_port"), "{e}");
}

#[test]
fn a_full_file_parses_with_defaults() {
    let c: ProxyConfig = toml::from_str(
        "[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\n",
    )
    .expect("valid config");
    assert_eq!(c.pairings[0].draft_tokens, 4);
    c.validate().expect("valid");
    let pc = c.pairings[0].to_pairing_config(0);
    assert_eq!(pc.name, "m");
}
