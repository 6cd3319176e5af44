#!/usr/bin/env python3
"""Turn the raw files of benchmarks/gpu/run.sh (the distributed case, issue 16 item 6) into tables.

Usage: summarize.py --out benchmarks/results/gpu/distributed RAW_DIR [RAW_DIR ...]
Each RAW_DIR is an unpacked <stage>.tar.gz (build, fast, slow). Writes OUT/table.md (markdown),
OUT/summary.json, and copies every row's raw report (`tightwad bench` JSON and text, the proxy's
stats, the llama.cpp servers' metrics around the row, where the draft ran) beside them.
Standard library only.
"""
import argparse
import glob
import json
import os
import re
import shutil
import sys

# exactness.py beside this file (the repository's benchmarks/gpu/, or the .gpu/ bundle): its rule.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exactness as exactness_check  # noqa: E402

# (row, label, where the draft really ran)
ROWS = [
    ("alone", "target alone", "no draft"),
    ("md-anchor", "llama.cpp `-md`, draft in the target's GPU (**anchor**: as if the draft sat in the target's GPU; not distributed)",
     "target's own GPU, inside the target process: no network between target and draft"),
    ("rpc-remote", "llama.cpp `-md`, draft on a remote rpc-server",
     "`ggml-rpc-server` (same card, own process) behind the relay; the target drives it over RPC"),
    ("mp-k4", "Tightwad multi-prompt rounds, k=4 pinned",
     "draft `llama-server` (same card, own process) behind the relay"),
    ("op-k4", "Tightwad one-pass rounds, k=4 pinned", "draft `llama-server` (same card, own process) behind the relay"),
    ("op-k8", "Tightwad one-pass rounds, k=8 pinned", "draft `llama-server` (same card, own process) behind the relay"),
    ("op-k8-base", "Tightwad one-pass rounds, k=8 pinned, **baseline build** (`tightwad-base`, the commit in the row's where)",
     "draft `llama-server` (same card, own process) behind the relay"),
    ("op-adaptive", "Tightwad one-pass rounds, adaptive", "draft `llama-server` (same card, own process) behind the relay"),
    ("op-adaptive-base", "Tightwad one-pass rounds, adaptive, **baseline build** (`tightwad-base`, the commit in the row's where)",
     "draft `llama-server` (same card, own process) behind the relay"),
    ("op-k4-near", "Tightwad one-pass rounds, k=4 pinned, proxy on the target's host",
     "draft `llama-server` (same card, own process) behind the relay; the proxy beside the target"),
    ("op-adaptive-near", "Tightwad one-pass rounds, adaptive, proxy on the target's host",
     "draft `llama-server` (same card, own process) behind the relay; the proxy beside the target"),
    ("auto", "Tightwad auto: draft server AND native remote-rpc target, adaptive, path per request",
     "both: the draft `llama-server` and the target's `-md` draft on the `ggml-rpc-server`, each behind the relay"),
]
LABEL = {r: l for r, l, _ in ROWS}
WHERE = {r: w for r, _, w in ROWS}
ORDER = {r: i for i, (r, _, _) in enumerate(ROWS)}
# Rows with the draft's confidence stop named (run.sh: op-k8-pV, op-adaptive-pV; V = draft_p_min,
# 0 = drafts run to k), labelled and placed after their base row.
P_ROW = re.compile(r"^(op-k8|op-adaptive)-p(\d+(?:\.\d+)?)$")
# Rows with drafts sampled on the draft's GPU (run.sh: op-k8-bs, op-adaptive-bs).
BS_ROW = re.compile(r"^(op-k8|op-adaptive)-bs$")


def with_p_rows(names):
    """ROWS plus a (row, label, where) entry for every row among `names` that asks for drafts
    otherwise than the proxy's default (a confidence stop, sampling on the draft's GPU)."""
    extra = []
    for name in sorted(set(names)):
        b = BS_ROW.match(name)
        if b and name not in LABEL:
            base = b.group(1)
            extra.append((name, f"{LABEL[base]}, drafts sampled on the draft's GPU", WHERE[base]))
            LABEL[name], WHERE[name] = extra[-1][1], extra[-1][2]
            ORDER[name] = ORDER[base] + 0.25
        m = P_ROW.match(name)
        if m and name not in LABEL:
            base, p = m.group(1), m.group(2)
            extra.append((name, f"{LABEL[base]}, draft_p_min {p}" + (" (drafts run to k)" if float(p) == 0 else ""), WHERE[base]))
            LABEL[name], WHERE[name] = extra[-1][1], extra[-1][2]
            ORDER[name] = ORDER[base] + 0.5 + float(p) / 10
    return sorted(ROWS + extra, key=lambda r: ORDER[r[0]])
NAME = re.compile(r"^(fast|slow)-(.+)-rtt(\d+(?:_\d+)?)$")


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def metric(text, name):
    if not text:
        return None
    m = re.search(r"^llamacpp:" + re.escape(name) + r" ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def llama_acceptance(raw, name):
    """Drafted/accepted by llama.cpp's own speculation during the row (server metrics delta)."""
    before, after = (read(os.path.join(raw, f"{name}-metrics-{w}.txt")) for w in ("before", "after"))
    vals = [metric(t, n) for t in (before, after) for n in ("spec_decode_num_draft_tokens_total", "spec_decode_num_accepted_tokens_total")]
    if None in vals:
        return None
    drafted, accepted = vals[2] - vals[0], vals[3] - vals[1]
    return {"drafted": drafted, "accepted": accepted, "acceptance": accepted / drafted if drafted > 0 else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("raw", nargs="+")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    meta = {"commit": None, "card": None, "llama": None, "patched": None, "config": {}, "skipped": []}
    rows, exactness = [], None
    for raw in a.raw:
        meta["commit"] = meta["commit"] or read(os.path.join(raw, "COMMIT"))
        card = read(os.path.join(raw, "gpu.txt"))
        meta["card"] = meta["card"] or card
        ver = read(os.path.join(raw, "llama-version.txt"))
        if ver:
            meta["llama"] = " ".join(l for l in ver.splitlines() if l.startswith(("version", "built")))
        patched = read(os.path.join(raw, "llama-patched.txt"))
        if patched and (meta["patched"] is None or patched.startswith("patched (")):
            meta["patched"] = patched
        cfg = read(os.path.join(raw, "config.txt"))
        if cfg:
            kv = dict(x.split("=", 1) for x in cfg.splitlines() if "=" in x)
            meta["config"][kv.get("stage", os.path.basename(raw))] = kv
        for f in sorted(glob.glob(os.path.join(raw, "relay-rtt*.json"))):
            try:
                m = json.load(open(f))
            except ValueError:
                continue
            meta.setdefault("relays", {})[m["nominal_rtt_ms"]] = m
            shutil.copy(f, os.path.join(a.out, os.path.basename(f)))
        sk = read(os.path.join(raw, "skipped.txt"))
        if sk:
            meta["skipped"] += sk.splitlines()
        if os.path.exists(os.path.join(raw, "exactness.json")):
            exactness = json.load(open(os.path.join(raw, "exactness.json")))
            # Judged by the current rule (exactness.py's docstring), also for runs made before it.
            for side in (exactness, exactness.get("anchor")):
                if side and "rows" in side:
                    side.update(exactness_check.tally(side["rows"], exactness["tie_margin"]))
            exactness["passed"] = not exactness["unexplained"]
            shutil.copy(os.path.join(raw, "exactness.json"), os.path.join(a.out, "exactness.json"))
        for f in sorted(glob.glob(os.path.join(raw, "*.json"))):
            name = os.path.basename(f)[:-5]
            m = NAME.match(name)
            if not m or name.endswith("-stats"):
                continue
            target, row, rtt = m.group(1), m.group(2), float(m.group(3).replace("_", "."))
            try:
                rep = json.load(open(f))
            except ValueError:
                continue
            t = rep["totals"]
            r = {
                "target": target, "row": row, "rtt_ms": rtt,
                "direct_tok_s": t["direct_tok_s"], "row_tok_s": t["proxy_tok_s"], "speedup": t["speedup"],
                "direct_tokens": t["direct_tokens"], "direct_seconds": t["direct_seconds"],
                "row_tokens": t["proxy_tokens"], "equal_token_counts": t["equal_token_counts"],
                "acceptance": t.get("acceptance"), "tokens_per_round": t.get("tokens_per_round"),
                "identical_prompts": t["identical_prompts"], "prompts": t["prompts"],
                "max_tokens": rep.get("max_tokens"),
                # run.sh writes where the draft really ran (which card) beside each row.
                "where": read(os.path.join(raw, f"{name}.where")) or WHERE.get(row),
            }
            ps = rep.get("proxy_stats")
            if ps:
                r["requests"] = {k: ps.get(f"{k}_requests") for k in ("speculative", "target_only", "passthrough")}
            st_path = os.path.join(raw, f"{name}-stats.json")
            if os.path.exists(st_path):
                st = json.load(open(st_path))["pairings"][0]
                r["verification"] = (st.get("verification") or {}).get("path")
                if st.get("paths"):
                    r["paths"] = st["paths"]
                if st.get("controller") is not None:
                    r["controller"] = st["controller"]
                shutil.copy(st_path, os.path.join(a.out, f"{name}-stats.json"))
            la = llama_acceptance(raw, name)
            if la:
                r["llama_speculation"] = la
                if r["acceptance"] is None and row in ("md-anchor", "rpc-remote"):
                    r["acceptance"] = la["acceptance"]
            for ext in ("json", "txt", "where"):
                src = os.path.join(raw, f"{name}.{ext}")
                if os.path.exists(src):
                    shutil.copy(src, os.path.join(a.out, f"{name}.{ext}"))
            rows.append(r)
    # The patch's own evidence: one-pass verification only runs where /props advertised draft_tokens.
    if any(r.get("verification") == "one_pass" for r in rows) and not (meta["patched"] or "").startswith("patched"):
        meta["patched"] = "patched (one-pass verification ran: the target advertised draft_tokens)"
    # "Target alone": every row's direct side (through the same relay), pooled.
    for target in ("fast", "slow"):
        for rtt in sorted({r["rtt_ms"] for r in rows if r["target"] == target}):
            rs = [r for r in rows if r["target"] == target and r["rtt_ms"] == rtt and r["row"] != "alone"]
            tok = sum(r["direct_tokens"] for r in rs)
            sec = sum(r["direct_seconds"] for r in rs)
            rows.append({"target": target, "row": "alone", "rtt_ms": rtt, "direct_tok_s": tok / sec if sec else 0,
                         "row_tok_s": tok / sec if sec else 0, "speedup": 1.0,
                         "direct_min": min(r["direct_tok_s"] for r in rs), "direct_max": max(r["direct_tok_s"] for r in rs),
                         "measurements": len(rs), "where": WHERE["alone"]})
    table_rows = with_p_rows([r["row"] for r in rows])
    for r in rows:
        r["where"] = r["where"] or WHERE.get(r["row"])
    rows.sort(key=lambda r: (r["target"], r["rtt_ms"], ORDER.get(r["row"], 99)))
    json.dump({"meta": meta, "rows": rows,
               "exactness": {k: v for k, v in exactness.items() if k != "rows"} if exactness else None},
              open(os.path.join(a.out, "summary.json"), "w"), indent=2)

    fmt = lambda v, p=2: "–" if v is None else f"{v:.{p}f}"
    out = [f"# Distributed case, measured on {meta['card'] or 'a GPU'}",
           "",
           f"- commit `{meta['commit'] or 'unknown'}`; llama.cpp {meta['llama'] or '?'}, {meta['patched'] or '?'}",
           ] + [f"- {stage} stage: " + "; ".join(f"{k} `{v}`" for k, v in kv.items() if k != "stage")
                for stage, kv in meta["config"].items()]
    for nominal, m in sorted(meta.get("relays", {}).items()):
        out.append(f"- relay {nominal:g} ms: adds {m['added_rtt_ms']:.2f} ms to a ping on this machine "
                   f"(`relay_rtt.py`: median of {m['pings']} 500-byte pings through it, less one without; "
                   f"a relay adding nothing: {m['zero_relay_added_ms']:.2f} ms)")
    if meta["skipped"]:
        out.append(f"- **not measured (stage time budget):** {', '.join(meta['skipped'])}")
    out.append("")
    # Overview: rows x (target, RTT), speedup over the target alone measured in the same run.
    cols = sorted({(r["target"], r["rtt_ms"]) for r in rows}, key=lambda c: (c[0], c[1]))
    out.append("| configuration | " + " | ".join(f"{t} target, {rtt:g} ms RTT" for t, rtt in cols) + " |")
    out.append("|---|" + "---|" * len(cols))
    for row, label, _ in table_rows:
        cells = []
        for t, rtt in cols:
            r = next((x for x in rows if x["target"] == t and x["rtt_ms"] == rtt and x["row"] == row), None)
            if r is None:
                cells.append("not measured")
            elif row == "alone":
                cells.append(f"{r['direct_tok_s']:.1f} tok/s")
            else:
                cells.append(f"{r['row_tok_s']:.1f} tok/s (**{r['speedup']:.2f}x**)")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Speedup = the row's tok/s ÷ the target alone's, both measured by the same `tightwad bench` run "
               "(direct and row requests alternating, same prompts, greedy). \"Target alone\" pools the direct side of "
               "every row at that RTT (range in the detail table).")
    out.append("")
    for target in ("fast", "slow"):
        rs = [r for r in rows if r["target"] == target]
        if not rs:
            continue
        out.append(f"## {target} target: every row")
        out.append("")
        out.append("| RTT | configuration | where the draft ran | direct tok/s | row tok/s | speedup | acceptance | tokens/round | identical text | served | verification / path |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            if r["row"] == "alone":
                out.append(f"| {r['rtt_ms']:g} ms | target alone | – | {r['direct_tok_s']:.1f} (rows: {r['direct_min']:.1f}–{r['direct_max']:.1f}) | – | 1.00x | – | – | – | – | – |")
                continue
            req = r.get("requests")
            served = "–" if not req else ", ".join(f"{v} {k.replace('_', '-')}" for k, v in req.items() if v)
            path = r.get("verification") or "–"
            if r.get("paths"):
                p = r["paths"]
                chose = f"chose {p['preferred']}" if p.get("preferred") else "no path preferred yet"
                path += f"; {chose} (rounds {p['rounds_requests']}, native {p['native_requests']} requests incl. warm-up)"
            out.append(
                f"| {r['rtt_ms']:g} ms | {LABEL.get(r['row'], r['row'])} | {r['where']} | {r['direct_tok_s']:.1f} | {r['row_tok_s']:.1f} | "
                f"**{r['speedup']:.2f}x** | {fmt(r['acceptance'])} | {fmt(r['tokens_per_round'])} | {r['identical_prompts']}/{r['prompts']} | {served} | {path} |")
        out.append("")
    if exactness:
        out.append("## Exactness on the GPU (one-pass rounds, k=4 pinned, vs the target alone)")
        out.append("")
        out.append(f"{exactness['identical']}/{exactness['prompts']} prompts token-identical; divergences at a top-two margin "
                   f"below {exactness['tie_margin']}: {exactness['divergences_at_ties']}; others: "
                   f"{len(exactness['divergences_not_ties'])}; **{'passed' if exactness['passed'] else 'FAILED'}**.")
        out.append("")
        # Every run's rows are re-tallied above, so the batched figures are always there (a run
        # made before the batched evaluation existed shows none in its rows).
        out.append(f"Of the {len(exactness['divergences_not_ties'])} wider divergences, the target's own batched "
                   f"evaluation of the same prefix (one uncached prompt batch) picks the proxy's token in "
                   f"{exactness['wide_divergences_the_batched_target_makes']} and is itself a tie (margin below "
                   f"{exactness['tie_margin']}) in {exactness['wide_divergences_batched_ties']} more; unexplained: "
                   f"**{len(exactness['unexplained'])}** (the check passes when none is).")
        out.append("")
        out.append("| prompt | first divergence | target's top-two margin there | took the runner-up |"
                   " batched: margin, picks the proxy's token |")
        out.append("|---|---|---|---|---|")
        for row in exactness["rows"]:
            if not row["identical"]:
                out.append(f"| `{row['prompt'][:40].replace(chr(10), ' ')}` | token {row.get('first_divergence')} | "
                           f"{fmt(row.get('margin'), 4)} | {row.get('proxy_took_runner_up')} |"
                           f" {fmt(row.get('batched_margin'), 4)}, {row.get('batched_picks_it')} |")
        out.append("")
        anchor = exactness.get("anchor")
        if anchor:
            out.append(f"llama.cpp's own `-md` speculation on the same prompts (no proxy): {anchor['identical']}/"
                       f"{len(anchor['rows'])} token-identical; divergences at a margin below {exactness['tie_margin']}: "
                       f"{anchor['divergences_at_ties']}; others: {len(anchor['divergences_not_ties'])} (the batched "
                       f"target picks its token in {anchor['wide_divergences_the_batched_target_makes']}, a batched "
                       f"tie in {anchor['wide_divergences_batched_ties']}; unexplained: {len(anchor['unexplained'])}).")
            out.append("")
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
