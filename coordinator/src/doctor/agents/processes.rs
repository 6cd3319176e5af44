//! A dry run of every process the layout names, on its own host: flags against that host's build,
//! model files where the arguments say, and where they really are.

use super::*;

impl Cluster {
    /// Flags and model files of every process the layout names.
    pub async fn process_checks(&self, fleet: &Fleet) -> Vec<Check> {
        let mut checks = Vec::new();
        for (reference, view) in &self.processes {
            let subject = reference.to_string();
            let check = match &view.check {
                Ok(check) => check,
                Err(error) => {
                    let (status, hint) = if error.contains("unreachable") {
                        (Status::Skip, "fix the host check above first".to_string())
                    } else {
                        (
                            Status::Fail,
                            format!(
                                "add a [[process]] named {:?} to the agent config on {}, or fix the name in the coordinator's layout",
                                reference.process, reference.host
                            ),
                        )
                    };
                    checks.push(
                        Check::new(
                            Category::Flags,
                            subject,
                            status,
                            format!("cannot check: {error}"),
                        )
                        .hint(hint),
                    );
                    continue;
                }
            };
            for model in &check.models {
                checks.push(self.model_check(fleet, reference, model).await);
            }
            match &check.flag_error {
                None => checks.push(
                    Check::new(
                        Category::Flags,
                        subject.clone(),
                        Status::Pass,
                        format!(
                            "{} accepts every flag ({})",
                            check.kind,
                            check
                                .binary
                                .as_ref()
                                .and_then(|b| {
                                    build_label(b).or_else(|| {
                                        b.rpc_protocol.as_ref().map(|v| format!("RPC protocol v{v}"))
                                    })
                                })
                                .unwrap_or_else(|| "this host's build".into())
                        ),
                    )
                    .details(json!({ "args": check.args })),
                ),
                Some(error) => checks.push(
                    Check::new(Category::Flags, subject.clone(), Status::Fail, error.clone())
                        .hint(format!(
                            "fix the args of [[process]] {:?} in {}'s agent config: flags change between llama.cpp builds, and this host's build is the one that counts",
                            reference.process, reference.host
                        ))
                        .details(json!({ "args": check.args })),
                ),
            }
        }
        checks
    }

    async fn model_check(&self, fleet: &Fleet, reference: &ProcessRef, model: &ModelArg) -> Check {
        let subject = reference.to_string();
        let details = json!({
            "flag": model.flag, "path": model.path, "exists": model.exists,
            "size_bytes": model.size_bytes, "found_elsewhere": model.found_elsewhere,
        });
        if model.exists {
            return match (&model.gguf, &model.error) {
                (Some(g), _) => Check::new(
                    Category::Model,
                    subject,
                    Status::Pass,
                    format!(
                        "{} {} ({}, {}, {} params{})",
                        model.flag,
                        model.path,
                        gib(model.size_bytes),
                        g.file_type.as_deref().unwrap_or("?"),
                        crate::doctor::memory::params(g.parameter_count),
                        g.expert_count
                            .filter(|e| *e > 1)
                            .map(|e| format!(", MoE {e} experts"))
                            .unwrap_or_default()
                    ),
                )
                .details(details),
                (None, error) => Check::new(
                    Category::Model,
                    subject,
                    Status::Fail,
                    format!(
                        "{} {}: not a readable GGUF model ({})",
                        model.flag,
                        model.path,
                        error.as_deref().unwrap_or("unknown format")
                    ),
                )
                .hint("the file is damaged or not a model: copy it again (`tightwad models copy` verifies checksums)")
                .details(details),
            };
        }
        let file_name = std::path::Path::new(&model.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.path.clone());
        let hint = if let Some(there) = model.found_elsewhere.first() {
            format!(
                "{file_name} is at {there} on {}: change {} to that path in [[process]] {:?} of its agent config (or move the file)",
                reference.host, model.flag, reference.process
            )
        } else {
            let mut elsewhere = None;
            for host in &self.hosts {
                if host.entry.name == reference.host {
                    continue;
                }
                if let Some(client) = &host.client {
                    if let Ok(found) = client.find_model(&file_name).await {
                        if let Some(m) = found.first() {
                            elsewhere = Some((host.entry.name.clone(), m.path.clone()));
                            break;
                        }
                    }
                }
            }
            let _ = fleet;
            match elsewhere {
                Some((host, path)) => format!(
                    "{host} has it at {path}: `tightwad models copy {file_name} --from {host} --to {}`, then point {} at the copy",
                    reference.host, model.flag
                ),
                None => format!(
                    "no host has {file_name}: put it in one of {}'s model folders and point {} at it",
                    reference.host, model.flag
                ),
            }
        };
        Check::new(
            Category::Model,
            subject,
            Status::Fail,
            format!(
                "{} {}: no such file on {}",
                model.flag, model.path, reference.host
            ),
        )
        .hint(hint)
        .details(details)
    }
}
