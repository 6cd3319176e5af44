#!/usr/bin/env python3
"""Exactness on the GPU: the proxy's greedy tokens against the target alone, token by token.

Batched verification runs other CUDA kernels than one-token decoding, so the two can differ where
the target's own top two choices are nearly tied. For every prompt this records the first
divergence (if any), the target's top-two log-probability margin there, and whether the proxy took
the target's runner-up. The check passes when every divergence sits at a small margin.
Standard library only (runs on the GPU machine as is).
"""
import argparse
import json
import urllib.request

PROMPTS = [
    "The capital of France is", "def quicksort(arr):", "Once upon a time", "1, 2, 3, 4, 5,",
    "Q: What is the speed of light?\nA:", "import numpy as np\nx = np.", "Dear Sir or Madam,",
    "The theory of relativity states that", "SELECT name FROM users WHERE", "Roses are red, violets are",
    "Step 1: preheat the oven.\nStep 2:", "The mitochondria is the", "In 1969, the first humans",
    "Translate to German: good morning", "JSON: {\"name\": \"Ada\", \"age\":", "To be or not to be,",
]
TIE_MARGIN = float(__import__("os").environ.get("TIE_MARGIN", "0.1"))


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=len(PROMPTS), help="use the first N prompts")
    a = ap.parse_args()
    rows = []
    for prompt in PROMPTS[: a.limit]:
        through = post(a.proxy + "/v1/completions", {"prompt": prompt, "max_tokens": a.max_tokens,
                                                     "temperature": 0, "return_token_ids": True})
        proxy_ids = through["choices"][0]["token_ids"]
        ref = post(a.target + "/completion", {"prompt": prompt, "n_predict": a.max_tokens, "temperature": 0,
                                              "n_probs": 2, "return_tokens": True, "cache_prompt": False})
        ref_ids = ref["tokens"]
        probs = ref.get("completion_probabilities", [])
        first = next((i for i, (x, y) in enumerate(zip(proxy_ids, ref_ids)) if x != y), None)
        row = {"prompt": prompt, "tokens": len(ref_ids), "identical": first is None and len(proxy_ids) == len(ref_ids)}
        if first is not None:
            top = probs[first]["top_logprobs"] if first < len(probs) else []
            margin = (top[0]["logprob"] - top[1]["logprob"]) if len(top) >= 2 else None
            row.update({"first_divergence": first, "margin": margin,
                        "proxy_took_runner_up": len(top) >= 2 and proxy_ids[first] == top[1]["id"],
                        "is_tie": margin is not None and margin < TIE_MARGIN})
        rows.append(row)
        print(json.dumps(row))
    divergent = [r for r in rows if not r["identical"]]
    summary = {
        "prompts": len(rows), "identical": len(rows) - len(divergent),
        "divergences_at_ties": sum(1 for r in divergent if r.get("is_tie")),
        "divergences_not_ties": [r for r in divergent if not r.get("is_tie")],
        "tie_margin": TIE_MARGIN,
        "passed": all(r.get("is_tie") for r in divergent),
        "rows": rows,
    }
    with open(a.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))


if __name__ == "__main__":
    main()
