//! The report for people: a terminal table, or a Markdown document.

use std::fmt::Write as _;

use super::BenchReport;

fn opt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// The per-prompt table and the totals, for a terminal.
pub fn render_table(report: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>9} {:>9} {:>8} {:>9} {:>5} {:>6} {:>7} {:>8}  served by",
        "category",
        "direct/s",
        "proxy/s",
        "speedup",
        "tokens",
        "same",
        "rounds",
        "accept",
        "tok/rnd",
    );
    for r in &report.prompts {
        let (acceptance, per_round) = (r.acceptance(), r.tokens_per_round());
        let _ = writeln!(
            s,
            "{:<10} {:>9.1} {:>9.1} {:>7.2}x {:>4}/{:<4} {:>5} {:>6} {:>7} {:>8}  {}",
            r.category,
            r.direct_tok_s,
            r.proxy_tok_s,
            r.speedup,
            r.direct_tokens,
            r.proxy_tokens,
            if r.identical { "yes" } else { "NO" },
            r.rounds,
            opt_ratio(acceptance),
            opt_ratio(per_round),
            r.served_by.join(","),
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        s,
        "total: direct {:.1} tok/s ({} tokens in {:.2} s), proxy {:.1} tok/s ({} tokens in {:.2} s): {:.2}x wall-clock{}",
        t.direct_tok_s,
        t.direct_tokens,
        t.direct_seconds,
        t.proxy_tok_s,
        t.proxy_tokens,
        t.proxy_seconds,
        t.speedup,
        if t.equal_token_counts { "" } else { " (token counts differ: ratio of time per token)" },
    );
    let _ = writeln!(
        s,
        "identical text on {}/{} prompts; {} rounds, {} drafted, {} accepted (acceptance {}), {} tokens per round",
        t.identical_prompts,
        t.prompts,
        t.rounds,
        t.drafted,
        t.accepted,
        opt_ratio(t.acceptance),
        opt_ratio(t.tokens_per_round),
    );
    if let Some(st) = &report.proxy_stats {
        let _ = writeln!(
            s,
            "proxy stats during the run: {} rounds, {} drafted, {} accepted; requests: {} speculative, {} target-only, {} passthrough",
            st.rounds, st.drafted, st.accepted, st.speculative_requests, st.target_only_requests, st.passthrough_requests
        );
    }
    s
}

/// The same as a Markdown document.
pub fn render_markdown(report: &BenchReport) -> String {
    let mut s = String::new();
    let e = &report.environment;
    let _ = writeln!(s, "# tightwad bench\n");
    let _ = writeln!(
        s,
        "Proxy `{}` vs target `{}` (model `{}`), {} max tokens, {} repeat(s), {} warm-up request(s) per side; commit `{}`{}, {} CPU(s){}.\n",
        report.proxy,
        report.target,
        report.model,
        report.max_tokens,
        report.repeats,
        report.warmup,
        e.commit.as_deref().unwrap_or("unknown"),
        if e.dirty == Some(true) { " (with local changes)" } else { "" },
        e.nproc,
        e.cpu_model.as_deref().map(|m| format!(", {m}")).unwrap_or_default(),
    );
    let _ = writeln!(s, "| category | direct tok/s | proxy tok/s | speedup | tokens direct/proxy | identical | rounds | acceptance | tokens/round | served by |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---|");
    for r in &report.prompts {
        let (acceptance, per_round) = (r.acceptance(), r.tokens_per_round());
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2}x | {}/{} | {} | {} | {} | {} | {} |",
            r.category,
            r.direct_tok_s,
            r.proxy_tok_s,
            r.speedup,
            r.direct_tokens,
            r.proxy_tokens,
            if r.identical { "yes" } else { "**no**" },
            r.rounds,
            opt_ratio(acceptance),
            opt_ratio(per_round),
            r.served_by.join(", "),
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        s,
        "| **total** | {:.1} | {:.1} | **{:.2}x** | {}/{} | {}/{} | {} | {} | {} | |",
        t.direct_tok_s,
        t.proxy_tok_s,
        t.speedup,
        t.direct_tokens,
        t.proxy_tokens,
        t.identical_prompts,
        t.prompts,
        t.rounds,
        opt_ratio(t.acceptance),
        opt_ratio(t.tokens_per_round),
    );
    s
}
