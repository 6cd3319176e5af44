use super::*;

use figment::Jail;

/// A test in figment's jail (jails run one at a time): a scratch folder as the working directory,
/// and none of the caller's `TIGHTWAD_*` variables (they come back afterwards; the rest of the
/// environment stays, other tests of this process may be reading it).
// figment's own signature: the jail's closure returns `figment::Result`.
#[allow(clippy::result_large_err)]
pub(super) fn jailed(test: impl FnOnce(&mut Jail)) {
    Jail::expect_with(|jail| {
        for (name, _) in std::env::vars() {
            if name.starts_with("TIGHTWAD_") {
                jail.set_env(&name, "");
                std::env::remove_var(&name);
            }
        }
        test(jail);
        Ok(())
    });
}

fn write(jail: &Jail, text: &str) -> std::path::PathBuf {
    jail.create_file("t.toml", text).expect("write");
    jail.directory().join("t.toml")
}

#[test]
fn environment_variables_override_file_keys() {
    jailed(|jail| {
        let path = write(
            jail,
            "max_body_bytes = 10\n[[pairings]]\ntarget = \"http://a:1\"\n",
        );
        jail.set_env("TIGHTWAD_MAX_BODY_BYTES", "2048");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT", "http://b:2");
        jail.set_env("TIGHTWAD_PAIRING_ADAPTIVE", "false");
        jail.set_env("UNRELATED", "x");
        let c = ProxyConfig::load_with_env(&path).expect("loads");
        assert_eq!(c.max_body_bytes, 2048);
        assert_eq!(c.pairings[0].target, "http://a:1");
        assert_eq!(c.pairings[0].draft.as_deref(), Some("http://b:2"));
        assert!(!c.pairings[0].adaptive);
        jail.set_env("TIGHTWAD_MAX_BODY_BYTES", "lots");
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.contains("TIGHTWAD_MAX_BODY_BYTES") && e.contains("max_body_bytes"),
            "{e}"
        );
    });
}

/// Before, the environment was read only with `-c FILE`: `TIGHTWAD_PAIRING_DRAFT_TOKENS` and
/// friends were silently dropped without a file.
#[test]
fn the_environment_alone_describes_a_pairing_without_a_file() {
    jailed(|jail| {
        jail.set_env("TIGHTWAD_PAIRING_TARGET", "http://a:1");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "6");
        jail.set_env("TIGHTWAD_PAIRING_ALIASES", "[\"gpt-4o\"]");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKNS", "5");
        let loaded = ProxyConfig::load_layered(None).expect("loads");
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.contains("TIGHTWAD_PAIRING_DRAFT_TOKNS is not a pairing key")),
            "{:?}",
            loaded.warnings
        );
        let p = &loaded.config.pairings[0];
        assert_eq!((p.target.as_str(), p.draft_tokens), ("http://a:1", Some(6)));
        assert_eq!(p.aliases, vec!["gpt-4o".to_string()]);
    });
    jailed(|jail| {
        jail.set_env(
            "TIGHTWAD_PAIRINGS",
            "[{target = \"http://a:1\"}, {name = \"b\", target = \"http://b:2\"}]",
        );
        let whole = ProxyConfig::load_layered(None).expect("loads");
        assert_eq!(whole.config.pairings.len(), 2);
        assert_eq!(whole.config.pairings[1].name.as_deref(), Some("b"));
    });
}

/// Before, any override re-read the merged values and a mistake in the file lost its line.
#[test]
fn a_file_error_keeps_its_line_when_the_environment_overrides_another_key() {
    jailed(|jail| {
        let path = write(
            jail,
            "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokens = \"four\"\n",
        );
        jail.set_env("TIGHTWAD_MAX_BODY_BYTES", "2048");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT", "http://b:2");
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("draft_tokens") && e.contains("line 5"),
            "{e}"
        );
    });
}

/// A bad value from a pairing variable or a flag names it, not the file it lands in.
#[test]
fn an_override_error_names_the_variable_or_the_flag() {
    jailed(|jail| {
        let path = write(jail, "[[pairings]]\ntarget = \"http://a:1\"\n");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "many");
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.contains("TIGHTWAD_PAIRING_DRAFT_TOKENS")
                && e.contains("pairings[0].draft_tokens")
                && !e.contains("t.toml"),
            "{e}"
        );
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "3");
        jail.set_env(
            "TIGHTWAD_PAIRINGS",
            "[{target = \"http://a:1\", adaptive = 3}]",
        );
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("TIGHTWAD_PAIRINGS:") && e.contains("pairings[0].adaptive"),
            "{e}"
        );
    });
}

#[test]
fn a_pairing_variable_with_several_pairings_is_refused_by_name() {
    jailed(|jail| {
        let path = write(
            jail,
            "[[pairings]]\nname = \"a\"\ntarget = \"http://a:1\"\n[[pairings]]\nname = \"b\"\ntarget = \"http://b:2\"\n",
        );
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "6");
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.contains("TIGHTWAD_PAIRING_DRAFT_TOKENS") && e.contains("2 pairings"),
            "{e}"
        );
    });
}

#[test]
fn flags_change_only_the_fields_they_name_on_the_single_pairing() {
    jailed(|jail| {
        let path = write(
            jail,
            "[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\ndraft = \"http://b:2\"\ndraft_tokens = 6\n",
        );
        // `--target` alone keeps the file's draft (before, it dropped it).
        let flags = FlagOverrides {
            target: Some("http://c:3".into()),
            ..Default::default()
        };
        let c = ProxyConfig::resolve(Some(&path), &flags)
            .expect("resolves")
            .config;
        let p = &c.pairings[0];
        assert_eq!(
            (p.target.as_str(), p.draft.as_deref(), p.draft_tokens),
            ("http://c:3", Some("http://b:2"), Some(6))
        );
        // `--draft` sets the file's pairing's draft (before, it was ignored); a flag wins over
        // the variable for the same key.
        jail.set_env("TIGHTWAD_PAIRING_DRAFT", "http://e:5");
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "3");
        let flags = FlagOverrides {
            draft: Some("http://d:4".into()),
            ..Default::default()
        };
        let c = ProxyConfig::resolve(Some(&path), &flags)
            .expect("resolves")
            .config;
        assert_eq!(c.pairings[0].draft.as_deref(), Some("http://d:4"));
        assert_eq!(c.pairings[0].draft_tokens, Some(3));
        assert_eq!(c.pairings[0].target, "http://a:1");
    });
}

#[test]
fn a_pairing_flag_with_several_pairings_is_refused_naming_them() {
    jailed(|jail| {
        let path = write(
            jail,
            "[[pairings]]\nname = \"a\"\ntarget = \"http://a:1\"\n[[pairings]]\nname = \"b\"\ntarget = \"http://b:2\"\n",
        );
        let flags = FlagOverrides {
            draft: Some("http://d:4".into()),
            ..Default::default()
        };
        let e = ProxyConfig::resolve(Some(&path), &flags)
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
        let c = ProxyConfig::resolve(Some(&path), &flags).expect("resolves");
        assert_eq!(c.config.listen.port(), 9);
    });
}

/// Without a pairing below them, pairing flags and variables need a target, and say how to
/// give one.
#[test]
fn pairing_settings_without_a_target_say_how_to_give_one() {
    jailed(|jail| {
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "6");
        let flags = FlagOverrides {
            draft: Some("http://d:4".into()),
            ..Default::default()
        };
        let e = ProxyConfig::resolve(None, &flags).unwrap_err().to_string();
        assert!(
            e.contains("--draft, TIGHTWAD_PAIRING_DRAFT_TOKENS need a target")
                && e.contains("--target"),
            "{e}"
        );
    });
}

#[test]
fn file_errors_name_the_key_the_file_and_the_line() {
    jailed(|jail| {
        let path = write(
            jail,
            "listen = \"127.0.0.1:1\"\n\n[[pairings]]\ntarget = \"http://a:1\"\ndraft_tokns = 3\n",
        );
        let e = ProxyConfig::load_with_env(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.toml") && e.contains("draft_tokns") && e.contains("line 5"),
            "{e}"
        );
        // A missing key: the line of the table that lacks it.
        let path = write(
            jail,
            "[[pairings]]\ntarget = \"http://a:1\"\n\n[[pairings]]\ndraft = \"http://b:1\"\n",
        );
        let e = ProxyConfig::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("line 4") && e.contains("pairings[1]") && e.contains("target"),
            "{e}"
        );
        // Not TOML at all: the parser's own line.
        let path = write(jail, "listen = \"127.0.0.1:1\"\nmax_body_bytes = = 3\n");
        let e = ProxyConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("line 2"), "{e}");
    });
}

/// A value of the right type that cannot run (a k above 8, a URL without a scheme) is named
/// where it was set too: before, the check's message said neither file nor line.
#[test]
fn a_value_that_cannot_run_is_named_where_it_was_set() {
    jailed(|jail| {
        let path = write(
            jail,
            "max_connections_per_client = 0\n[[pairings]]\ntarget = \"http://a:1\"\n\ndraft_tokens = 12\n",
        );
        let none = FlagOverrides::default();
        let e = ProxyConfig::resolve(Some(&path), &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml, line 1: max_connections_per_client must be at least 1"),
            "{e}"
        );
        let path = write(
            jail,
            "[[pairings]]\ntarget = \"http://a:1\"\n\ndraft_tokens = 12\n",
        );
        let e = ProxyConfig::resolve(Some(&path), &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.toml, line 4: pairing 0: draft_tokens must be between 1 and 8"),
            "{e}"
        );
        jail.set_env("TIGHTWAD_PAIRING_DRAFT_TOKENS", "9");
        let e = ProxyConfig::resolve(Some(&path), &none)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("TIGHTWAD_PAIRING_DRAFT_TOKENS: pairing 0: draft_tokens"),
            "{e}"
        );
        let flags = FlagOverrides {
            draft_tokens: Some(0),
            draft: Some("b:2".into()),
            ..Default::default()
        };
        let e = ProxyConfig::resolve(Some(&path), &flags)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--draft: pairing 0: draft URL \"b:2\""),
            "{e}"
        );
        let flags = FlagOverrides {
            draft_tokens: Some(0),
            ..Default::default()
        };
        let e = ProxyConfig::resolve(Some(&path), &flags)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--draft-tokens: pairing 0: draft_tokens"),
            "{e}"
        );
    });
}

#[test]
fn old_spellings_are_read_and_warned_about_with_file_and_line() {
    jailed(|jail| {
        let path = write(
            jail,
            "[[pairings]]\ntarget = \"http://a:1\"\ntarget_kind = \"llamacpp\"\ntarget_timeout_secs = 7\n",
        );
        let loaded = ProxyConfig::load_layered(Some(&path)).expect("loads");
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
    });
}

/// The file is read with the workspace's TOML parser (TOML 1.1, as the fleet commands read the
/// same file): an inline table over several lines with a trailing comma loads.
#[test]
fn the_file_is_read_with_the_same_toml_as_every_other_command() {
    jailed(|jail| {
        let text = "pairings = [{\n  name = \"m\",\n  target = \"http://a:1\",\n}]\n";
        let path = write(jail, text);
        toml::from_str::<toml::Table>(text).expect("TOML 1.1");
        let c = ProxyConfig::load(&path).expect("loads");
        assert_eq!(c.pairings[0].name.as_deref(), Some("m"));
    });
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
        "listen = \"0.0.0.0:8088\"\n[[pairings]]\nname = \"m\"\ntarget = \"http://a:1\"\nadaptive = false\ndisable_above_tok_s = 40\n[[pairings]]\nname = \"n\"\ntarget = \"http://b:1\"\nmoe = true\ndraft_tokens = 4\n",
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
    // A confidence floor for drafts only a llama-server draft can stop at.
    for (pairing, why) in [
        ("draft = \"prompt-lookup\"\n", "prompt lookup"),
        ("draft = \"http://d:1\"\ndraft_kind = \"vllm\"\n", "vLLM"),
    ] {
        let c: ProxyConfig = toml::from_str(&format!(
            "[[pairings]]\ntarget = \"http://a:1\"\n{pairing}draft_p_min = 0.3\n"
        ))
        .expect("parses");
        let advice = c.advice().join("\n");
        assert!(
            advice.contains("draft_p_min = 0.3 has no effect") && advice.contains(why),
            "{advice}"
        );
    }
    // Sampling on the draft's device, likewise a llama-server draft's.
    let c: ProxyConfig = toml::from_str(
        "[[pairings]]\ntarget = \"http://a:1\"\ndraft = \"prompt-lookup\"\ndraft_backend_sampling = true\n",
    )
    .expect("parses");
    let advice = c.advice().join("\n");
    assert!(
        advice.contains("draft_backend_sampling = true has no effect")
            && advice.contains("prompt lookup"),
        "{advice}"
    );
    let served: ProxyConfig = toml::from_str(
        "[[pairings]]\ntarget = \"http://a:1\"\ndraft = \"http://d:1\"\ndraft_p_min = 0.3\n",
    )
    .expect("parses");
    assert_eq!(served.advice(), Vec::<String>::new());
    // At draft_tokens = 8, or unset (8 on a one-pass target), `moe` can act.
    for k in ["draft_tokens = 8\n", ""] {
        let quiet: ProxyConfig = toml::from_str(&format!(
            "api_keys = [\"k\"]\nlisten = \"0.0.0.0:8088\"\n[[pairings]]\ntarget = \"http://a:1\"\nmoe = true\n{k}disable_above_tok_s = 40\n"
        ))
        .expect("parses");
        assert_eq!(quiet.advice(), Vec::<String>::new(), "{k}");
    }
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
    // Unset: the verification path decides once the target is probed (`engine::draft_length`).
    assert_eq!(c.pairings[0].draft_tokens, None);
    c.validate().expect("valid");
    let pc = c.pairings[0].to_pairing_config(0);
    assert_eq!(pc.name, "m");
}

#[test]
fn how_drafts_are_asked_for_is_checked_with_the_key_and_the_fix() {
    let parse = |keys: &str| -> ProxyConfig {
        toml::from_str(&format!(
            "[[pairings]]\ntarget = \"http://a:1\"\ndraft = \"http://d:1\"\n{keys}"
        ))
        .expect("parses")
    };
    let e = parse("draft_p_min = 1.5\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("draft_p_min is a probability") && e.contains("1.5"),
        "{e}"
    );
    let e = parse("draft_p_min = 0.3\ndraft_backend_sampling = true\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("draft_backend_sampling cannot be combined with draft_p_min = 0.3")
            && e.contains("set draft_p_min = 0 or draft_backend_sampling = false"),
        "{e}"
    );
    let on_device = parse("draft_backend_sampling = true\n");
    on_device
        .validate()
        .expect("valid without a confidence floor");
    let pairing = on_device.pairings[0].to_pairing_config(0);
    assert!(pairing.draft_options().backend_sampling);
    assert_eq!(pairing.draft_options().p_min, 0.0);
}
