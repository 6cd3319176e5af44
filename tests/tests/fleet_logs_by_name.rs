//! `tightwad logs NAME` without a host: the coordinator asks every agent (real agents in network
//! namespaces) which one runs a process of that name, and refuses to guess between several.
//!
//! Lives in the harness crate, not beside the coordinator: it drives coordinator code against real
//! `tightwad-agent` processes (the agent binary) in network namespaces, which is what this crate
//! starts (a coordinator test using it would make a dev-dependency cycle).

use tightwad_e2e::cluster::*;

use tightwad_coordinator::fleet;

#[test]
fn logs_find_the_one_host_with_the_process_and_refuse_to_guess() {
    let cluster = ClusterPlan::new()
        .host("alpha")
        .rpc_server("rpc", 50052)
        .rpc_server("solo", 50053)
        .host("beta")
        .rpc_server("rpc", 50052)
        .start();
    cluster.start_process("alpha", "solo");
    let fleet = cluster.fleet();
    let found = cluster
        .rt
        .block_on(fleet::logs::find_host(&fleet, "solo"))
        .expect("solo is on alpha only");
    assert_eq!(found, "alpha");
    let ambiguous = cluster
        .rt
        .block_on(fleet::logs::find_host(&fleet, "rpc"))
        .expect_err("rpc is on both hosts")
        .to_string();
    assert!(
        ambiguous.contains("2 hosts") && ambiguous.contains("alpha") && ambiguous.contains("beta"),
        "{ambiguous}"
    );
    let missing = cluster
        .rt
        .block_on(fleet::logs::find_host(&fleet, "nope"))
        .expect_err("no host has it")
        .to_string();
    assert!(missing.contains("no reachable host"), "{missing}");
    // What the command prints comes from the found host's agent: the supervisor's start note
    // and the rpc-server's banner.
    let text = cluster.rt.block_on(async {
        let client = fleet
            .connect(fleet.config.host(&found).expect("alpha"))
            .await
            .expect("connect");
        let mut stream = client.logs("solo", 200, false).await.expect("logs");
        let mut text = String::new();
        while let Some(reply) = stream.next_reply().await.expect("reply") {
            if let tightwad_protocol::messages::Reply::LogLines(lines) = reply {
                for l in lines {
                    text.push_str(&l.line);
                    text.push('\n');
                }
            }
        }
        text
    });
    assert!(text.contains("started pid"), "{text}");
    cluster
        .rt
        .block_on(fleet::print_agent_logs(
            &fleet, "alpha", "solo", 10, false, true,
        ))
        .expect("the CLI's printer reads the same log");
}
