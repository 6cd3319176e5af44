//! The llama.cpp builds the agents run: each host's build, whether a pool or a pairing's hosts
//! agree, and the `tightwad build` command that makes them.

use super::*;

pub(super) fn build_label(info: &BinaryInfo) -> Option<String> {
    let b = info.build.as_ref()?;
    let number = b
        .build_number
        .map(|n| format!("b{n}"))
        .unwrap_or_else(|| "b?".into());
    Some(match (&b.version, &b.commit) {
        (Some(v), Some(c)) => format!("{v} {number}-{c}"),
        (None, Some(c)) => format!("{number}-{c}"),
        (Some(v), None) => format!("{v} {number}"),
        (None, None) => number,
    })
}

/// The `tightwad build` command that makes these hosts agree: the newest release tag among
/// their builds (`b8111`), or a placeholder where none looks like one.
pub fn build_command<'a>(builds: impl Iterator<Item = &'a HostBuild>) -> String {
    let newest = builds
        .filter_map(|b| b.llama.as_deref())
        .flat_map(|label| label.split_whitespace())
        .filter_map(|word| {
            word.strip_prefix('b')?
                .split('-')
                .next()?
                .parse::<u64>()
                .ok()
        })
        // llama.cpp's release tags are b<build number>; a package's own build 1 is not one.
        .filter(|n| *n >= 1000)
        .max();
    build_suggestion(newest.map(|n| format!("b{n}")).as_deref())
}

/// A host's llama.cpp build and rpc-server protocol, as its agent reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBuild {
    pub llama: Option<String>,
    pub rpc_protocol: Option<String>,
    /// The GPU backend, where the agent knows it (builds made by `tightwad build`). Shown, not
    /// compared: a CUDA host and a CPU host of one pool run one build with two backends.
    pub backend: Option<String>,
}

impl HostBuild {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.llama {
            match &self.backend {
                Some(b) => parts.push(format!("llama.cpp {l} ({b})")),
                None => parts.push(format!("llama.cpp {l}")),
            }
        }
        if let Some(r) = &self.rpc_protocol {
            parts.push(format!("RPC protocol v{r}"));
        }
        if parts.is_empty() {
            "no llama.cpp binary found".into()
        } else {
            parts.join(", ")
        }
    }
}

impl Cluster {
    pub fn build_of(&self, host: &str) -> Option<HostBuild> {
        let status = self.status(host)?;
        let find = |kind| status.inventory.binaries.iter().find(|b| b.kind == kind);
        Some(HostBuild {
            llama: find(ProcessKind::LlamaServer).and_then(build_label),
            rpc_protocol: find(ProcessKind::RpcServer).and_then(|b| b.rpc_protocol.clone()),
            backend: find(ProcessKind::LlamaServer)
                .and_then(|b| b.build.as_ref())
                .and_then(|b| b.backend)
                .map(|b| b.to_string()),
        })
    }

    /// Builds that must match (pool members, native pairing's two hosts) are failures when they
    /// differ; draft and target on different builds only a warning (HTTP does not care, ties may).
    pub fn build_checks(&self, layout: &Layout) -> Vec<Check> {
        let mut checks = Vec::new();
        let mut must_match = |subject: String, hosts: Vec<&str>, why: &str| {
            let builds: Vec<(&str, HostBuild)> = hosts
                .iter()
                .filter_map(|h| self.build_of(h).map(|b| (*h, b)))
                .collect();
            if builds.len() < hosts.len() {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Skip,
                        "some hosts are unreachable",
                    )
                    .hint("fix the host checks above first"),
                );
                return;
            }
            let differs = |f: fn(&HostBuild) -> Option<String>| {
                let known: Vec<String> = builds.iter().filter_map(|(_, b)| f(b)).collect();
                known.windows(2).any(|w| w[0] != w[1])
            };
            let listing = builds
                .iter()
                .map(|(h, b)| format!("{h}: {}", b.describe()))
                .collect::<Vec<_>>()
                .join("; ");
            let details = json!(builds
                .iter()
                .map(|(h, b)| json!({"host": h, "llama_build": b.llama, "rpc_protocol": b.rpc_protocol}))
                .collect::<Vec<_>>());
            if differs(|b| b.llama.clone()) || differs(|b| b.rpc_protocol.clone()) {
                let reference = builds
                    .iter()
                    .find_map(|(h, b)| b.llama.clone().map(|l| format!("{l} (as on {h})")))
                    .unwrap_or_else(|| "one build".into());
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Fail,
                        format!("llama.cpp builds differ ({why}): {listing}"),
                    )
                    .hint(format!(
                        "build the same llama.cpp on every one of these hosts (e.g. {reference}) in one command: {}",
                        build_command(builds.iter().map(|(_, b)| b))
                    ))
                    .details(details),
                );
            } else {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Pass,
                        format!("same build: {listing}"),
                    )
                    .details(details),
                );
            }
        };
        for pool in &layout.pools {
            let mut hosts = vec![pool.coordinator.host.as_str()];
            hosts.extend(pool.workers.iter().map(|w| w.host.as_str()));
            must_match(
                format!("pool {}", pool.name),
                hosts,
                "RPC workers and their coordinator must speak the same RPC protocol",
            );
        }
        for native in &layout.native_pairings {
            must_match(
                format!("native {}", native.name),
                vec![native.target.host.as_str(), native.draft_worker.host.as_str()],
                "the draft's rpc-server and the target's llama-server must speak the same RPC protocol",
            );
        }
        for (index, pairing) in layout.pairings.iter().enumerate() {
            let name = pairing.display_name(index);
            let (Some(t), Some(d)) = (
                layout.process_for(&name, crate::cluster::layout::Role::Target),
                layout.process_for(&name, crate::cluster::layout::Role::Draft),
            ) else {
                continue;
            };
            let (Some(tb), Some(db)) = (self.build_of(&t.host), self.build_of(&d.host)) else {
                continue;
            };
            let subject = format!("pairing {name}");
            if tb.llama != db.llama {
                checks.push(
                    Check::new(
                        Category::Build,
                        subject,
                        Status::Warn,
                        format!(
                            "draft and target run different llama.cpp builds: {} {}; {} {}",
                            t.host,
                            tb.describe(),
                            d.host,
                            db.describe()
                        ),
                    )
                    .hint(format!("works over HTTP, but one build everywhere avoids surprises (and native pairing requires it): {}", build_command([&tb, &db].into_iter()))),
                );
            } else {
                checks.push(Check::new(
                    Category::Build,
                    subject,
                    Status::Pass,
                    format!("draft and target on the same build ({})", tb.describe()),
                ));
            }
        }
        if checks.is_empty() {
            // No layout: at least say whether the hosts agree (the field report had three builds).
            let builds: Vec<(String, HostBuild)> = self
                .hosts
                .iter()
                .filter_map(|h| {
                    self.build_of(&h.entry.name)
                        .map(|b| (h.entry.name.clone(), b))
                })
                .collect();
            let distinct: std::collections::BTreeSet<_> =
                builds.iter().filter_map(|(_, b)| b.llama.clone()).collect();
            let listing = builds
                .iter()
                .map(|(h, b)| format!("{h}: {}", b.describe()))
                .collect::<Vec<_>>()
                .join("; ");
            if distinct.len() > 1 {
                checks.push(
                    Check::new(
                        Category::Build,
                        "all hosts",
                        Status::Warn,
                        format!("hosts run different llama.cpp builds: {listing}"),
                    )
                    .hint(format!(
                        "RPC pools and native pairing need one build on every host involved: {}",
                        build_command(builds.iter().map(|(_, b)| b))
                    )),
                );
            } else if !builds.is_empty() {
                checks.push(Check::new(
                    Category::Build,
                    "all hosts",
                    Status::Pass,
                    format!("one build: {listing}"),
                ));
            }
        }
        checks
    }
}

/// Used by `tightwad doctor`'s hint: the command that makes the hosts agree.
pub fn build_suggestion(reference: Option<&str>) -> String {
    match reference {
        Some(r) => format!(
            "tightwad build --ref {r} (or --source llama.cpp.tar.gz for hosts without internet)"
        ),
        None => {
            "tightwad build --ref REF (or --source llama.cpp.tar.gz for hosts without internet)"
                .into()
        }
    }
}

#[cfg(test)]
mod build_command_tests {
    use super::*;

    #[test]
    fn suggests_the_newest_release_tag() {
        let host = |l: &str| HostBuild {
            llama: Some(l.into()),
            rpc_protocol: None,
            backend: None,
        };
        let builds = [
            host("b8112-aaa"),
            host("b8079-bbb"),
            host("0.5.0-dev b1-ccc"),
        ];
        let text = build_command(builds.iter());
        assert!(text.contains("tightwad build --ref b8112"), "{text}");
        let text = build_command([host("0.5.0-dev b1-ccc")].iter());
        assert!(text.contains("tightwad build --ref REF"), "{text}");
    }
}
