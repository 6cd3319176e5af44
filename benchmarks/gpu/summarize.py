#!/usr/bin/env python3
"""Turn a GPU run's raw files (benchmarks/gpu/run.sh bench) into benchmarks/results/gpu/.

Writes README.md (tables), summary.json, speedup.png (if matplotlib is there) and copies the raw
per-scenario JSON/text reports and exactness.json beside them.
Usage: summarize.py RAW_DIR OUT_DIR [--gpu "name"] [--build "..."]
"""
import argparse
import glob
import json
import os
import shutil

SCENARIOS = [
    ("fast-passthrough", "fast target, no draft (engine passthrough)"),
    ("fast-adaptive", "fast target, draft, adaptive controller"),
    ("fast-forced-k4", "fast target, draft, speculation forced on (k=4, fan-out verify)"),
    ("fast-native", "fast target, native pairing steered by the proxy (k=8)"),
    ("slow-forced-k4", "slow target, draft, speculation forced on (k=4)"),
    ("slow-adaptive", "slow target, draft, adaptive controller"),
    ("slow-native", "slow target, native pairing steered by the proxy (k=8)"),
    ("fast-auto", "fast target, draft server AND native pairing: the controller picks the path per request"),
    ("slow-auto", "slow target, draft server AND native pairing: the controller picks the path per request"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--gpu", default="")
    ap.add_argument("--build", default="")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for f in sorted(glob.glob(os.path.join(a.raw, "*.json"))):
        name = os.path.basename(f)[:-5]
        if name == "exactness" or name.endswith("-stats"):
            continue
        d = json.load(open(f))
        t = d["totals"]
        base, _, rtt = name.rpartition("-rtt")
        rows.append({
            "scenario": base, "rtt_ms": float(rtt.replace("_", ".")),
            "direct_tok_s": t["direct_tok_s"], "proxy_tok_s": t["proxy_tok_s"], "speedup": t["speedup"],
            "acceptance": t.get("acceptance"), "tokens_per_round": t.get("tokens_per_round"),
            "identical_prompts": t.get("identical_prompts"), "prompts": t.get("prompts"),
            "tokens": t["direct_tokens"],
        })
        stats = os.path.join(a.raw, f"{name}-stats.json")
        if os.path.exists(stats):
            # The path chooser's figures at the end of an "auto" scenario.
            paths = json.load(open(stats))["pairings"][0].get("paths")
            rows[-1]["paths"] = paths
            shutil.copy(stats, os.path.join(a.out, f"{name}-stats.json"))
        for ext in ("json", "txt"):
            src = os.path.join(a.raw, f"{name}.{ext}")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(a.out, f"{name}.{ext}"))
    order = {s: i for i, (s, _) in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: (order.get(r["scenario"], 99), r["rtt_ms"]))
    exact = json.load(open(os.path.join(a.raw, "exactness.json")))
    shutil.copy(os.path.join(a.raw, "exactness.json"), os.path.join(a.out, "exactness.json"))
    json.dump({"gpu": a.gpu, "build": a.build, "rows": rows,
               "exactness": {k: v for k, v in exact.items() if k != "rows"}},
              open(os.path.join(a.out, "summary.json"), "w"), indent=2)
    desc = dict(SCENARIOS)
    fmt = lambda v, p=2: "–" if v is None else f"{v:.{p}f}"
    lines = [
        "| scenario | RTT added | direct tok/s | through proxy tok/s | speedup | acceptance | tokens/round | identical text |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {desc.get(r['scenario'], r['scenario'])} | {r['rtt_ms']} ms | {fmt(r['direct_tok_s'], 1)} | "
            f"{fmt(r['proxy_tok_s'], 1)} | **{fmt(r['speedup'])}x** | {fmt(r['acceptance'])} | "
            f"{fmt(r['tokens_per_round'])} | {r['identical_prompts']}/{r['prompts']} |")
    ex_lines = ["| prompt | first divergence | target's top-two margin there | proxy took the runner-up |", "|---|---|---|---|"]
    for row in exact["rows"]:
        if not row["identical"]:
            ex_lines.append(f"| `{row['prompt'][:40].replace(chr(10), ' ')}` | token {row['first_divergence']} | {row['margin']:.4f} | {row['proxy_took_runner_up']} |")
    path_lines = ["| scenario | RTT added | requests on proxy rounds | on native | rounds tok/s | native tok/s | preferred | why |",
                  "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("paths")
        if p:
            path_lines.append(
                f"| {r['scenario']} | {r['rtt_ms']} ms | {p['rounds_requests']} | {p['native_requests']} | "
                f"{fmt(p.get('rounds_tok_s'), 1)} | {fmt(p.get('native_tok_s'), 1)} | {p['preferred']} | {p['last_reason']} |")
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n\n" + "\n".join(ex_lines) + "\n")
        if len(path_lines) > 2:
            f.write("\nPath choice in the auto scenarios (warm-up requests included):\n\n" + "\n".join(path_lines) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        labels = [f"{r['scenario']}\n{r['rtt_ms']} ms" for r in rows]
        fig, ax = plt.subplots(figsize=(11, 4.5))
        colors = ["#4e79a7" if r["scenario"].startswith("fast") else "#f28e2b" for r in rows]
        ax.bar(range(len(rows)), [r["speedup"] for r in rows], color=colors)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("through proxy / direct (tok/s)")
        ax.set_title(f"Tightwad on {a.gpu or 'GPU'}: speedup over the target alone (blue: fast target, orange: slow target)")
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "speedup.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no plot")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
