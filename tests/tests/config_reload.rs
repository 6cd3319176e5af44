//! Configuration reload without a restart (issue 17 item 13), with the real binaries:
//! - the proxy, on SIGHUP, takes a pairing's new `draft_tokens` and `aliases` while an answer is
//!   streaming; that answer finishes on the settings it started with, token for token the
//!   target's; `tightwad reload` does the same over HTTP and refuses a broken file, keeping the
//!   running settings;
//! - the agent, on SIGHUP, restarts only the server whose `[[process]]` entry changed: the other
//!   keeps running with the same PID.

use std::time::{Duration, Instant};

use serde_json::json;
use tightwad_e2e::proxy_process::{run_tightwad, ProxyProcess};
use tightwad_e2e::{
    compare, env, free_port, stream_token_ids, Agreement, LlamaServer, OpenStream, ServerOptions,
};

fn pairing_toml(port: u16, target: &str, draft: &str, k: usize, aliases: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n\n[[pairings]]\nname = \"m\"\naliases = [{aliases}]\ntarget = \"{target}\"\ndraft = \"{draft}\"\ndraft_tokens = {k}\ndraft_p_min = 0\nadaptive = false\n"
    )
}

/// The `tightwad` figures of a finished SSE body (the last chunk that carries them).
fn figures(body: &str) -> serde_json::Value {
    body.split("\n\n")
        .filter_map(|e| e.trim_start().strip_prefix("data: "))
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|c| c.get("tightwad").cloned())
        .last()
        .unwrap_or_else(|| panic!("no tightwad figures in {body}"))
}

#[tokio::test]
async fn sighup_gives_a_pairing_new_settings_while_an_answer_in_flight_finishes_exact() {
    let env = env();
    let target =
        LlamaServer::start(&env, &env.model("target.gguf"), ServerOptions::target(8)).await;
    let draft = LlamaServer::start(&env, &env.model("draft.gguf"), ServerOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tightwad.toml");
    let port = free_port();
    std::fs::write(&file, pairing_toml(port, &target.url, &draft.url, 2, "")).expect("config");
    let mut proxy = ProxyProcess::spawn(dir.path(), &["proxy"], &[], port);
    proxy.wait_ready().await;
    assert_eq!(proxy.models().await, vec!["m".to_string()]);

    let prompt = "The history of lighthouses";
    let reference = target.reference(json!(prompt), 300).await;
    let sent = Instant::now();
    let stream = OpenStream::start(
        &format!("{}/v1/completions", proxy.url),
        &json!({"model": "m", "prompt": prompt, "max_tokens": 300, "temperature": 0, "stream": true, "return_token_ids": true}),
        2,
    )
    .await;

    // New settings for the pairing, and an alias clients may ask for it by.
    std::fs::write(
        &file,
        pairing_toml(port, &target.url, &draft.url, 6, "\"gpt-4o\""),
    )
    .expect("config");
    proxy.hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.models().await.contains(&"gpt-4o".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the alias never appeared:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded_after = sent.elapsed();
    assert_eq!(proxy.stats().await["pairings"][0]["draft_tokens"], 6);

    // The answer in flight: exact, on the old k = 2 all along, and still running at the reload.
    let body = stream.finish().await;
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let outcome = compare(&stream_token_ids(&body), &reference, prompt);
    assert_ne!(outcome, Agreement::TieAt(0), "{prompt:?}");
    let old = figures(&body);
    let (rounds, drafted) = (old["rounds"].as_u64(), old["drafted"].as_u64());
    assert!(
        rounds > Some(0) && drafted <= rounds.map(|r| 2 * r),
        "the answer in flight kept k = 2: {old}"
    );
    assert!(
        old["elapsed_ms"].as_u64() > Some(reloaded_after.as_millis() as u64),
        "the answer ({old}) ended before the reload ({reloaded_after:?}): nothing was in flight"
    );

    // A new request by the alias is served by the same pairing, with the new k = 6.
    let (status, v) = tightwad_e2e::post_json(
        &format!("{}/v1/completions", proxy.url),
        &json!({"model": "gpt-4o", "prompt": prompt, "max_tokens": 60, "temperature": 0, "return_token_ids": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let new = &v["tightwad"];
    assert_eq!(new["served_by"], "speculative", "{v}");
    assert!(
        new["drafted"].as_u64() > new["rounds"].as_u64().map(|r| 2 * r),
        "k = 6 after the reload: {new}"
    );
    let short = target.reference(json!(prompt), 60).await;
    let ids: Vec<u64> = v["choices"][0]["token_ids"]
        .as_array()
        .expect("token_ids")
        .iter()
        .filter_map(|t| t.as_u64())
        .collect();
    assert_ne!(compare(&ids, &short, "alias"), Agreement::TieAt(0));

    // `tightwad reload` asks over HTTP: a broken file is refused and the running settings stay.
    std::fs::write(&file, "[[pairings]]\nname = \"m\"\ntarget = 42\n").expect("config");
    let url = proxy.url.clone();
    let out = run_tightwad(dir.path(), &["reload", "--proxy", &url], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("running one is kept") && stderr.contains("target"),
        "{stderr}"
    );
    assert!(proxy.models().await.contains(&"gpt-4o".to_string()));

    // A good file: the changed pairing is named.
    std::fs::write(
        &file,
        pairing_toml(port, &target.url, &draft.url, 3, "\"gpt-4o\", \"llama3\""),
    )
    .expect("config");
    let out = run_tightwad(dir.path(), &["reload", "--proxy", &url], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("changed [m]"), "{stdout}");
    assert!(proxy.models().await.contains(&"llama3".to_string()));
    assert_eq!(proxy.stats().await["pairings"][0]["draft_tokens"], 3);
}

mod agent {
    //! The agent's half: SIGHUP re-reads agent.toml; only the changed `[[process]]` restarts.

    use std::time::{Duration, Instant};

    use tightwad_e2e::agents::*;
    use tightwad_e2e::netns::*;
    use tightwad_e2e::test_env::*;
    use tightwad_protocol::messages::{ProcessState, ProcessStatus};

    fn processes(changed_port: u16) -> String {
        format!(
            "\n[[process]]\nname = \"keep\"\nkind = \"rpc-server\"\nargs = [\"-H\", \"127.0.0.1\", \"-p\", \"50052\"]\nautostart = true\n\n[[process]]\nname = \"change\"\nkind = \"rpc-server\"\nargs = [\"-H\", \"127.0.0.1\", \"-p\", \"{changed_port}\"]\nautostart = true\n"
        )
    }

    fn status(
        rt: &tokio::runtime::Runtime,
        client: &tightwad_protocol::client::Client,
        name: &str,
    ) -> ProcessStatus {
        rt.block_on(client.status())
            .expect("status")
            .processes
            .into_iter()
            .find(|p| p.name == name)
            .expect("process listed")
    }

    /// Poll until `name` is ready and `done` holds for it (panics after 30 s).
    fn wait_for(
        rt: &tokio::runtime::Runtime,
        client: &tightwad_protocol::client::Client,
        name: &str,
        done: impl Fn(&ProcessStatus) -> bool,
    ) -> ProcessStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = status(rt, client, name);
            if s.state == ProcessState::Ready && done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{name} never got there: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn sighup_restarts_only_the_server_whose_entry_changed() {
        let rt = runtime();
        let mut lab = Lab::new();
        let ns = lab.add_namespace();
        let models = lab.path("models");
        std::fs::create_dir_all(&models).expect("models dir");
        let _guard = rt.enter();
        let fleet = fleet_for(&coordinator_config(
            lab.dir.path(),
            &lab.path("coordinator"),
            &[("alpha", &format!("{}:7420", ns.ip))],
        ));
        let token = issue_token(&fleet);
        let state_dir = lab.path("agent");
        let agent = AgentProcess::start(AgentSpec {
            ns: &ns,
            state_dir: state_dir.clone(),
            models: models.clone(),
            join: Some(token),
            extra_toml: processes(50053),
        });
        let client = rt
            .block_on(fleet.connect(fleet.config.host("alpha").expect("host")))
            .expect("connect");
        let keep = wait_for(&rt, &client, "keep", |s| s.pid.is_some());
        let change = wait_for(&rt, &client, "change", |s| s.pid.is_some());

        // The operator edits one entry and reloads (`systemctl reload tightwad-agent`).
        let config = state_dir.with_extension("toml");
        let text = std::fs::read_to_string(&config).expect("agent config");
        std::fs::write(&config, text.replace("\"50053\"", "\"50054\"")).expect("edit");
        let pid = agent.child.as_ref().expect("agent child").id();
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());

        let changed = wait_for(&rt, &client, "change", |s| {
            s.pid != change.pid && s.args.contains(&"50054".to_string())
        });
        assert_eq!(changed.port, Some(50054), "{changed:?}");
        let kept = status(&rt, &client, "keep");
        assert_eq!(kept.state, ProcessState::Ready, "{kept:?}");
        assert_eq!(
            kept.pid, keep.pid,
            "the unchanged server kept running: {kept:?}"
        );
        assert_eq!(kept.restarts, keep.restarts, "{kept:?}");
        agent.wait_for_log("configuration reloaded", Duration::from_secs(10));
    }
}
