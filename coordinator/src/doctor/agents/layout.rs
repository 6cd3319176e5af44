//! The layout against what the agents run: every process it names exists with the kind its place
//! needs, and every pairing URL reaches the process it names.

use super::*;

impl Cluster {
    /// The layout against the agents: every named process exists with the right kind, and each
    /// pairing's URL points at the host and port its process listens on.
    pub fn layout_checks(&self, layout: &Layout) -> Vec<Check> {
        use crate::cluster::layout::{host_ip, Role};
        let mut checks = Vec::new();
        let kind_of = |r: &ProcessRef| self.check(r).map(|c| c.kind);
        let mut expect_kind = |r: &ProcessRef, want: ProcessKind, part: &str| {
            if let Some(kind) = kind_of(r) {
                if kind != want {
                    checks.push(
                        Check::new(
                            Category::Layout,
                            r.to_string(),
                            Status::Fail,
                            format!("{part} must be {}, but {r} is {}", a(want), a(kind)),
                        )
                        .hint(format!(
                            "name {} process of {} in the layout",
                            a(want),
                            r.host
                        )),
                    );
                }
            }
        };
        for pool in &layout.pools {
            expect_kind(
                &pool.coordinator,
                ProcessKind::LlamaServer,
                "a pool coordinator",
            );
            for w in &pool.workers {
                expect_kind(w, ProcessKind::RpcServer, "a pool worker");
            }
        }
        for native in &layout.native_pairings {
            expect_kind(
                &native.target,
                ProcessKind::LlamaServer,
                "a native pairing's target",
            );
            expect_kind(
                &native.draft_worker,
                ProcessKind::RpcServer,
                "a native pairing's draft worker",
            );
        }
        for (index, pairing) in layout.pairings.iter().enumerate() {
            let name = pairing.display_name(index);
            for (role, url) in [
                (Role::Target, Some(pairing.target.as_str())),
                (Role::Draft, pairing.draft.as_deref()),
            ] {
                let (Some(url), Some(reference)) = (url, layout.process_for(&name, role)) else {
                    continue;
                };
                let (Some(host), Some(process)) =
                    (self.host(&reference.host), self.process_status(&reference))
                else {
                    continue;
                };
                let authority = url
                    .split_once("://")
                    .map(|(_, rest)| rest)
                    .unwrap_or(url)
                    .split('/')
                    .next()
                    .unwrap_or("");
                let (url_host, url_port) = match authority.rsplit_once(':') {
                    Some((h, p)) => (h, p.parse::<u16>().ok()),
                    None => (authority, Some(80)),
                };
                let agent_host = host_ip(&host.entry.address);
                let mut problems = Vec::new();
                if url_port.is_some() && url_port != process.port {
                    problems.push(format!(
                        "{reference} listens on port {}",
                        process
                            .port
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "?".into())
                    ));
                }
                let local = matches!(url_host, "127.0.0.1" | "localhost");
                if url_host != agent_host
                    && !local
                    && agent_host.parse::<std::net::IpAddr>().is_ok()
                    && url_host.parse::<std::net::IpAddr>().is_ok()
                {
                    problems.push(format!("{} is at {agent_host}", reference.host));
                }
                let subject = format!("pairing {name}");
                if problems.is_empty() {
                    checks.push(Check::new(
                        Category::Layout,
                        subject,
                        Status::Pass,
                        format!("{} URL {url} is {reference}", role_name(role)),
                    ));
                } else {
                    checks.push(
                        Check::new(
                            Category::Layout,
                            subject,
                            Status::Fail,
                            format!(
                                "{} URL {url} does not match: {}",
                                role_name(role),
                                problems.join("; ")
                            ),
                        )
                        .hint(format!(
                            "fix the {} URL in [[pairings]] or the --port of {reference}",
                            role_name(role)
                        )),
                    );
                }
            }
        }
        checks
    }
}

fn role_name(role: crate::cluster::layout::Role) -> &'static str {
    match role {
        crate::cluster::layout::Role::Target => "target",
        crate::cluster::layout::Role::Draft => "draft",
    }
}

/// "a llama-server", "an rpc-server".
fn a(kind: ProcessKind) -> String {
    match kind {
        ProcessKind::RpcServer => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}
