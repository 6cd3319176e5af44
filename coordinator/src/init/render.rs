//! The commented coordinator config `tightwad init` writes: hosts, pairings, the agents'
//! `[[process]]` snippets to copy, the access (API key) decision.

use std::fmt::Write as _;

use crate::cluster::layout::host_ip;
use crate::cluster::HostEntry;
use crate::doctor::live::target_slots;
use tightwad_protocol::messages::ModelFile;
use tightwad_serve::engine::draft_length;

use super::access::{self, Access};
use super::{InitArgs, Proposal};

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn agent_snippet(out: &mut String, process: &str, model: &str, port: u16, extra: &str) {
    let _ = writeln!(out, "#   [[process]]");
    let _ = writeln!(out, "#   name = {}", quote(process));
    let _ = writeln!(out, "#   kind = \"llama-server\"");
    let _ = writeln!(
        out,
        "#   args = [\"-m\", {}, \"--host\", \"0.0.0.0\", \"--port\", \"{port}\", \"--cache-ram\", \"0\"{extra}]",
        quote(model)
    );
}

/// Context the target is planned for: the proxy verifies k + 1 copies of a context in one batch
/// (`doctor::live::target_slots`; `--kv-unified` shares one cache between the slots).
pub(super) const TARGET_CONTEXT: u64 = 16384;

/// The config text for the given hosts and pairings, with a fresh key when `--listen` reaches
/// the network (see [`access`]).
pub fn render(args: &InitArgs, hosts: &[HostEntry], proposals: &[Proposal]) -> String {
    let access = access::decide(&args.listen, false, args.no_api_key);
    render_with(args, hosts, proposals, &access)
}

/// [`render`] with the API-key decision made by the caller (who tells the user about it).
pub fn render_with(
    args: &InitArgs,
    hosts: &[HostEntry],
    proposals: &[Proposal],
    access: &Access,
) -> String {
    let configured = args
        .draft_tokens
        .map(|k| k.clamp(1, tightwad_serve::engine::controller::K_MAX));
    // The slots a stock target needs for the k it will be asked for (a patched one uses one a
    // request; init cannot know which build the target will run).
    let target_extra = format!(
        ", \"-np\", \"{}\", \"--kv-unified\", \"--metrics\"",
        target_slots(draft_length::wanted(configured, false))
    );
    let draft_tokens_line = match configured {
        Some(k) => format!("draft_tokens = {k}\n"),
        None => format!(
            "# draft_tokens = {}                 # unset: {} where the target verifies a draft in one pass (Tightwad's patch), else {}\n",
            draft_length::ONE_PASS_DEFAULT,
            draft_length::ONE_PASS_DEFAULT,
            draft_length::MULTI_PROMPT_DEFAULT
        ),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Tightwad coordinator config, written by `tightwad init`."
    );
    let _ = writeln!(
        out,
        "# Check it with `tightwad doctor`; serve with `tightwad proxy --config <this file>`.\n"
    );
    let _ = writeln!(
        out,
        "listen = \"{}\"          # where OpenAI clients connect",
        args.listen
    );
    let _ = writeln!(out, "{}", access.lines(&args.listen));
    if let Some(dir) = &args.state_dir {
        let _ = writeln!(
            out,
            "state_dir = {}   # the coordinator's identity and pinned agents\n",
            quote(&dir.display().to_string())
        );
    }
    if !hosts.is_empty() {
        let _ = writeln!(
            out,
            "# Hosts running tightwad-agent (enroll each with `tightwad token`)."
        );
    }
    for host in hosts {
        let _ = writeln!(
            out,
            "[[hosts]]\nname = {}\naddress = {}\n",
            quote(&host.name),
            quote(&host.address)
        );
    }
    let url_for = |host: &str, port: u16| {
        let address = hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| host_ip(&h.address).to_string())
            .unwrap_or_else(|| host.to_string());
        format!("http://{address}:{port}")
    };
    if proposals.is_empty() {
        let target = args
            .target_url
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        let _ = writeln!(
            out,
            "[[pairings]]\nname = \"tightwad\"                 # the model name clients ask for"
        );
        let _ = writeln!(out, "target = {}   # llama-server (stock: -np >= draft_tokens + 1), --kv-unified, --cache-ram 0", quote(&target));
        match &args.draft_url {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "draft = {}    # same tokenizer as the target",
                    quote(d)
                );
            }
            None => {
                let _ = writeln!(out, "# draft = \"http://draft-host:8081\"   # same tokenizer as the target; or \"prompt-lookup\"");
            }
        }
        let _ = writeln!(out, "{draft_tokens_line}");
        if let Some(model) = &args.target_model {
            let _ = writeln!(out, "# In the target host's agent.toml:");
            agent_snippet(&mut out, "target", model, 8080, &target_extra);
        }
        if let Some(model) = &args.draft_model {
            let _ = writeln!(out, "# In the draft host's agent.toml:");
            agent_snippet(&mut out, "draft", model, 8081, "");
        }
        return out;
    }
    for (i, p) in proposals.iter().enumerate() {
        let name = p
            .target
            .gguf
            .as_ref()
            .and_then(|g| g.name.clone())
            .unwrap_or_else(|| p.target.file_name.trim_end_matches(".gguf").to_string())
            .to_lowercase()
            .replace(' ', "-");
        let describe = |m: &ModelFile| {
            let g = m.gguf.clone().unwrap_or_default();
            format!(
                "{} ({:.0}M params, {})",
                m.file_name,
                g.parameter_count as f64 / 1e6,
                g.file_type.unwrap_or_else(|| "?".into())
            )
        };
        let (target_process, draft_process) = (format!("target-{i}"), format!("draft-{i}"));
        let _ = writeln!(
            out,
            "# Proposed from the agents' inventories: same vocabulary (fingerprint {}).\n# target {} on {}, draft {} on {}.",
            p.target.gguf.as_ref().and_then(|g| g.vocab_fingerprint.as_deref()).map(|f| crate::doctor::vocab::prefix(f, 12)).unwrap_or_else(|| "?".into()),
            describe(&p.target), p.target_host, describe(&p.draft), p.draft_host
        );
        let _ = writeln!(out, "[[pairings]]\nname = {}", quote(&name));
        let _ = writeln!(
            out,
            "target = {}",
            quote(&url_for(&p.target_host, 8080 + 2 * i as u16))
        );
        let _ = writeln!(
            out,
            "draft = {}",
            quote(&url_for(&p.draft_host, 8081 + 2 * i as u16))
        );
        let moe = p
            .target
            .gguf
            .as_ref()
            .and_then(|g| g.expert_count)
            .is_some_and(|n| n > 1);
        // `moe` holds k at 4: written only where draft_tokens lets k go higher (the proxy warns
        // about a `moe` that can change nothing).
        if moe && configured.is_none_or(|k| k > tightwad_serve::engine::controller::MOE_K_MAX) {
            let _ = writeln!(
                out,
                "moe = true                         # the target's GGUF has experts: k <= 4 until calibration says otherwise"
            );
        } else if moe {
            let _ = writeln!(
                out,
                "# The target's GGUF has experts; with draft_tokens > 4 add `moe = true` (k held at 4 until calibrated)."
            );
        }
        let _ = writeln!(out, "{draft_tokens_line}");
        for (host, process, role) in [
            (&p.target_host, &target_process, "target"),
            (&p.draft_host, &draft_process, "draft"),
        ] {
            let _ = writeln!(
                out,
                "[[processes]]                      # which agent process plays which part (for doctor)\nhost = {}\nprocess = {}\nrole = \"{role}\"\npairing = {}\n",
                quote(host), quote(process), quote(&name)
            );
        }
        let _ = writeln!(out, "# In {}'s agent.toml:", p.target_host);
        let mut extra = target_extra.clone();
        if let Some(flags) = &p.target_placement {
            let _ = writeln!(
                out,
                "#   (placement planned for {}'s GPUs and RAM: {}; `tightwad inspect MODEL --plan` shows the arithmetic)",
                p.target_host,
                crate::cluster::launch::shell_join(flags)
            );
            for f in flags {
                extra.push_str(&format!(", {}", quote(f)));
            }
        }
        agent_snippet(
            &mut out,
            &target_process,
            &p.target.path,
            8080 + 2 * i as u16,
            &extra,
        );
        let _ = writeln!(out, "# In {}'s agent.toml:", p.draft_host);
        agent_snippet(
            &mut out,
            &draft_process,
            &p.draft.path,
            8081 + 2 * i as u16,
            "",
        );
        let _ = writeln!(out);
    }
    out
}
