#!/usr/bin/env python3
"""Where a one-pass round's time goes (issue 16, fast target): the target and the draft server
measured ALONE, request by request, with no proxy and no relay in between.

For each case it sends the same requests Tightwad's rounds send and reports the median wall time
of the HTTP request next to the server's own `timings` (prompt_ms: the decode that evaluated the
uncached tail and the draft; predicted_ms: generation after it), so the difference is what HTTP,
JSON, the task queue and the sampler cost outside the decode. Cases:

  decode1          /completion, prompt = context + 1 new token, n_predict 1 (one target step)
  stream           one streamed /completion of N tokens: the target alone, per token
  verify k=K p=P   /completion with draft_tokens (K tokens the target agrees with), n_probs P
  verify k=K return_pieces   the same with n_probs 0 and return_pieces (patch 0003): what the
                   proxy sends a target that returns each token's text
  verify-miss k=K  the same with a draft the target rejects at its first token
  draft n=K        the draft server generating K tokens after a cached context (what a round asks)
  draft n=8 stop_p_min=P  the same, ended after a token the draft model gave less than P (patch
                   0004, the proxy's draft_p_min): its cost and how many tokens it keeps
  draft n=K backend_sampling  sampled on the GPU (no logits copied to the host per token)
  *+contention     the verify again while another client keeps the draft server generating on
                   the same GPU (pipelined drafting on one card)

Prints one line per case and writes JSON (--out).
"""
import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse


class Client:
    """One keep-alive HTTP connection (as the proxy's pooled client has)."""

    def __init__(self, url):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)

    def post(self, path, body):
        data = json.dumps(body)
        for attempt in range(2):
            try:
                t = time.perf_counter()
                self.conn.request("POST", path, data, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                raw = r.read()
                dt = time.perf_counter() - t
                if r.status != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status}: {raw[:300]!r}")
                return dt, json.loads(raw)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def tokenize(c, text):
    return c.post("/tokenize", {"content": text, "add_special": True})[1]["tokens"]


def greedy(c, prompt, n):
    _, v = c.post("/completion", {"prompt": prompt, "n_predict": n, "temperature": 0,
                                  "cache_prompt": True, "return_tokens": True, "ignore_eos": True})
    return v["tokens"]


def summary(name, walls, server_ms):
    w = statistics.median(walls) * 1e3
    s = statistics.median(server_ms) if server_ms else None
    row = {"case": name, "n": len(walls), "wall_ms_median": round(w, 3),
           "wall_ms_p90": round(sorted(walls)[int(0.9 * (len(walls) - 1))] * 1e3, 3),
           "server_ms_median": None if s is None else round(s, 3),
           "outside_server_ms": None if s is None else round(w - s, 3)}
    print(f"{name:<32} wall {w:8.2f} ms (p90 {row['wall_ms_p90']:8.2f})  server "
          f"{'-' if s is None else f'{s:8.2f}'} ms  outside {'-' if s is None else f'{w - s:6.2f}'} ms",
          flush=True)
    return row


def server_time(v):
    t = v.get("timings") or {}
    return (t.get("prompt_ms") or 0.0) + (t.get("predicted_ms") or 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out")
    a = ap.parse_args()
    T, D = Client(a.target), Client(a.draft)
    prompt = tokenize(T, "Write a short story about a lighthouse keeper who finds a message in a "
                         "bottle, and tell it in plain words.")
    # The target's own continuation: drafts built from it are accepted in full.
    ref = greedy(T, prompt, a.reps + 16)
    assert len(ref) >= a.reps + 9, f"the target gave {len(ref)} tokens"
    rows = []

    def decode1():
        walls, srv = [], []
        for i in range(a.reps):
            dt, v = T.post("/completion", {"prompt": prompt + ref[:i + 1], "n_predict": 1,
                                           "temperature": 0, "cache_prompt": True,
                                           "return_tokens": True, "n_probs": 0})
            walls.append(dt); srv.append(server_time(v))
        return walls, srv

    returned = []

    def verify(k, n_probs, miss=False, pieces=False):
        walls, srv = [], []
        returned.clear()
        for i in range(a.reps):
            ctx = prompt + ref[:i + 1]
            draft = ref[i + 1:i + 1 + k]
            if miss:
                draft = [(draft[0] + 7) % 32000] + draft[1:]
            dt, v = T.post("/completion", {"prompt": ctx, "n_predict": k + 1, "temperature": 0,
                                           "cache_prompt": True, "return_tokens": True,
                                           "n_probs": n_probs, "draft_tokens": draft,
                                           "speculative.n_max": 0, "ignore_eos": True,
                                           "return_pieces": pieces})
            walls.append(dt); srv.append(server_time(v))
            returned.append(len(v["tokens"]))
            if pieces:
                assert len(v.get("pieces", [])) == len(v["tokens"]), "return_pieces: one piece a token"
        return walls, srv

    drafted = []  # tokens each draft() request returned (the last call's)

    def draft(k, extra=None):
        walls, srv = [], []
        drafted.clear()
        for i in range(a.reps):
            body = {"prompt": prompt + ref[:i + 1], "n_predict": k, "temperature": 0,
                    "cache_prompt": True, "return_tokens": True, "n_probs": 0, "ignore_eos": True}
            body.update(extra or {})
            dt, v = D.post("/completion", body)
            walls.append(dt); srv.append(server_time(v))
            drafted.append(len(v["tokens"]))
        return walls, srv

    # Warm both servers (CUDA graphs, caches).
    decode1(); verify(4, 0); draft(4)
    rows.append(summary("decode1", *decode1()))
    _, v = T.post("/completion", {"prompt": prompt, "n_predict": 64, "temperature": 0,
                                  "cache_prompt": True, "ignore_eos": True})
    t = v["timings"]
    print(f"{'stream (target alone)':<32} {t['predicted_per_token_ms']:8.2f} ms a token "
          f"(server, {t['predicted_n']} tokens)", flush=True)
    rows.append({"case": "stream", "server_ms_per_token": t["predicted_per_token_ms"]})
    for k in (1, 2, 4, 8):
        for p in (0, 1):
            rows.append(summary(f"verify k={k} n_probs={p}", *verify(k, p)))
            # A draft of the target's own tokens: every verify returns k + 1 tokens.
            assert min(returned) == k + 1, f"verify k={k} returned {sorted(set(returned))} tokens"
        # What the proxy sends a patched target (0003): each token's text, no details.
        rows.append(summary(f"verify k={k} return_pieces", *verify(k, 0, pieces=True)))
    rows.append(summary("verify-miss k=4 n_probs=1", *verify(4, 1, miss=True)))
    assert max(returned) == 1, "a draft rejected at its first token returns one token"
    for k in (1, 4, 8):
        rows.append(summary(f"draft n={k}", *draft(k)))
    # The draft's confidence stop (patch 0004): how many of 8 tokens it keeps, and what that costs.
    for p_min in (0.3, 0.6):
        row = summary(f"draft n=8 stop_p_min={p_min}", *draft(8, {"stop_p_min": p_min}))
        row["mean_tokens"] = round(statistics.mean(drafted), 2)
        print(f"{'':<32} {row['mean_tokens']:.2f} tokens a draft on average", flush=True)
        rows.append(row)
    # Sampling on the GPU (llama.cpp's per-request `backend_sampling`, what its own in-process
    # drafting uses by default): no copy of the vocabulary's logits to the host per draft token.
    # n = 1 and 4 beside 8 separate a per-request cost (the server sets the slot's sampler up on
    # the device for each request) from the per-token saving.
    for k in (1, 4, 8):
        rows.append(summary(f"draft n={k} backend_sampling", *draft(k, {"backend_sampling": True})))
    rows.append(summary("draft n=4 top_k=1", *draft(4, {"top_k": 1})))
    rows.append(summary("draft n=4 samplers=[top_k] top_k=1", *draft(4, {"top_k": 1, "samplers": ["top_k"]})))

    # Contention: a second client keeps the draft server busy on the same GPU.
    stop = threading.Event()

    def hammer():
        c = Client(a.draft)
        while not stop.is_set():
            c.post("/completion", {"prompt": prompt, "n_predict": 8, "temperature": 0,
                                   "cache_prompt": True, "ignore_eos": True})

    th = threading.Thread(target=hammer, daemon=True)
    th.start()
    time.sleep(0.3)
    rows.append(summary("decode1+contention", *decode1()))
    rows.append(summary("verify k=4 n_probs=1+contention", *verify(4, 1)))
    stop.set(); th.join()
    if a.out:
        json.dump({"rows": rows}, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
