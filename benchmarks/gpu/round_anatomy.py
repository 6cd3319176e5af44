#!/usr/bin/env python3
"""Where a round's time goes, read from a GPU run's own llama-server logs (run.sh keeps them in
each stage's tarball): the target's one-pass verifications against its plain decoding, and the
draft server's tokens. Prints a Markdown table.

    python3 benchmarks/gpu/round_anatomy.py RAW_DIR     # the unpacked <stage>.tar.gz

llama-server logs per request `prompt eval time = X ms / N tokens` (the decode that evaluated
the uncached prompt tail, and for a client draft the draft with it) and `eval time = Y ms / M
tokens` (for a verification: sampling and accepting the M returned tokens; for generation: the
decode steps after the first); a verification also logs `draft acceptance`. The proxies' logs
(`proxy-*.log`, with `PROXY_LOG` at `tightwad_serve::engine=debug`) add each round's k and how
long its two requests took as the proxy saw them.
"""
import re
import statistics
import sys
from pathlib import Path

K_MAX = 8  # run.sh's --spec-draft-n-max and the adaptive rows' cap
LINE = re.compile(r"task (\d+) \|\s+(prompt eval|eval|total) time =\s+([\d.]+) ms /\s+(\d+) tokens")
ACCEPT = re.compile(r"task (\d+) \| draft acceptance = [\d.]+ \(\s*\d+ accepted /\s*(\d+) generated")
ROUND = re.compile(r"request\{id=(\S+) .*round\{n=\d+ k=(\d+)\}.*verified drafted=\d+ accepted=\d+ "
                   r"draft_ms=([\d.]+) verify_ms=([\d.]+)")


def tasks(log):
    """task id -> {"prompt": (ms, n), "eval": (ms, n), "verify": bool}"""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        m = LINE.search(line)
        if m:
            t = out.setdefault(int(m.group(1)), {"verify": False})
            t[m.group(2).split()[0]] = (float(m.group(3)), int(m.group(4)))
        m = ACCEPT.search(line)
        if m:
            t = out.setdefault(int(m.group(1)), {"verify": False})
            t["verify"] = True
            t["k"] = int(m.group(2))
    return out


def by_previous_k(verifications):
    """Decode times of one-token-tail verifications split by whether the verification before
    (on any slot: the target keeps one compute graph) had the same shape (a one-token tail and
    the same k): llama.cpp reuses the last graph only for a batch of the same shape. Direct
    requests between them are not seen here (a stream's one-token steps would also change it)."""
    same, changed, prev = [], [], None
    for x in verifications:
        shape = (x["prompt"][1], x.get("k"))
        if x["prompt"][1] == 1 and prev is not None:
            (same if shape == prev else changed).append(x["prompt"][0])
        prev = shape
    return same, changed


def proxy_rounds(log):
    """The proxy's rounds in log order: (request id, k, draft_ms, verify_ms)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = ROUND.search(line)
        if m:
            out.append((m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))))
    return out


def k_changes(rounds):
    """Rounds whose k differs from the round before in the same request (each is a batch of
    another shape for both servers, see `by_previous_k`)."""
    last, changes = {}, 0
    for rid, k, _, _ in rounds:
        changes += rid in last and last[rid] != k
        last[rid] = k
    return changes


def q(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * (len(values) - 1)))] if values else float("nan")


def row(name, values, note=""):
    if not values:
        return f"| {name} | 0 | – | – | – | {note} |"
    return (f"| {name} | {len(values)} | {q(values, 0.25):.2f} | {statistics.median(values):.2f} | "
            f"{q(values, 0.75):.2f} | {note} |")


def main():
    raw = Path(sys.argv[1])
    t = tasks(raw / "server-T.log")
    d = tasks(raw / "server-D.log")
    # In task order: `by_previous_k` compares each verification with the one before.
    verify = [x for _, x in sorted(t.items()) if x["verify"] and "prompt" in x]
    k4 = [x for x in verify if x["prompt"][1] == 1 and x.get("eval", (0, 0))[1] >= 1]
    gen = [x for x in t.values() if not x["verify"] and x.get("eval", (0, 0))[1] >= 32]
    batch = [x for x in t.values() if not x["verify"] and 24 <= x.get("prompt", (0, 0))[1] <= 64]
    drafts = [x for x in d.values() if x.get("eval", (0, 0))[1] >= 2]
    print(f"Read from `{raw}` (server-T.log: the target; server-D.log: the draft server).\n")
    print("| what (ms) | requests | p25 | median | p75 | note |")
    print("|---|---|---|---|---|---|")
    print(row("target alone: one decode step (generation, per token)",
              [x["eval"][0] / x["eval"][1] for x in gen], "`eval time` / tokens of direct requests"))
    print(row("target: a prompt batch of 24–64 tokens (whole decode)",
              [x["prompt"][0] for x in batch], "priming requests"))
    print(row("target: one-pass verification, decode of tail + draft",
              [x["prompt"][0] for x in k4], "`prompt eval time` of requests with `draft_tokens` (1 tail token + k)"))
    print(row("target: one-pass verification, sampling + accepting",
              [x["eval"][0] for x in k4], "`eval time`: the returned tokens, with `n_probs`"))
    same, changed = by_previous_k(verify)
    print(row("target: verification decode, the same k and one-token tail as the one before", same,
              "the target reuses its last compute graph"))
    print(row("target: verification decode, after a change of k or tail", changed,
              "a batch of another shape: a new graph"))
    for n in (1, 2):
        print(row(f"draft server: first decode of a request whose uncached tail is {n} token{'s' if n > 1 else ''}",
                  [x["prompt"][0] for x in drafts if x.get("prompt", (0, 0))[1] == n],
                  "`prompt eval time`; it also samples the first draft token"))
    for n in (1, 2):
        print(row(f"draft server: {K_MAX} draft tokens after a {n}-token tail (whole request)",
                  [x["total"][0] for x in drafts if x.get("prompt", (0, 0))[1] == n and x["eval"][1] == K_MAX],
                  "`total time`" + ("; after a 2-token batch the 1-token steps need their graph again" if n == 2 else "")))
    print(row("draft server: one draft token",
              [x["eval"][0] / x["eval"][1] for x in drafts],
              "`eval time` / tokens; the upper quartile is tokens drafted while the target verified on the same card"))
    print()
    proxies = sorted(raw.glob("proxy-*.log"))
    rounds = {p: proxy_rounds(p) for p in proxies}
    if not any(rounds.values()):
        return
    # The servers' side of a k = K_MAX round (pooled over every row: their logs do not say which
    # proxy asked), to set against each proxy's view of the same requests: the rest is the relay,
    # HTTP and the server's work outside its timings (parsing, queueing, the reply).
    d_srv = statistics.median([x["total"][0] for x in drafts if x["eval"][1] == K_MAX] or [float("nan")])
    v_srv = statistics.median([x["total"][0] for x in verify if x.get("k") == K_MAX and "total" in x] or [float("nan")])
    print(f"Rounds as each proxy logged them (k = {K_MAX} rounds: the proxy's median request times; "
          f"the servers' own `total time` for such requests, all rows pooled: draft {d_srv:.2f} ms, "
          f"verification {v_srv:.2f} ms; P1 is the stage's first RTT, P2 its second: what lies beyond "
          f"the servers' timings includes the relay's round trip, twice a round; it means something only "
          f"where the servers' times hold steady across rows, as the fast target's do, not where a "
          f"verification varies by tens of milliseconds, as the slow target's does).\n")
    print(f"| proxy log | rounds | k changed (share of rounds) | rounds at k = {K_MAX} | draft request | "
          f"verification request | beyond the servers' timings |")
    print("|---|---|---|---|---|---|---|")
    for p, rs in rounds.items():
        if not rs:
            continue
        full = [r for r in rs if r[1] == K_MAX]
        dm = statistics.median([r[2] for r in full]) if full else float("nan")
        vm = statistics.median([r[3] for r in full]) if full else float("nan")
        ch = k_changes(rs)
        print(f"| `{p.name}` | {len(rs)} | {ch} ({100 * ch / len(rs):.0f}%) | {len(full)} | {dm:.2f} ms | "
              f"{vm:.2f} ms | {dm + vm - d_srv - v_srv:.2f} ms a round |")
    print()


if __name__ == "__main__":
    main()
