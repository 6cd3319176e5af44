#!/usr/bin/env bash
# The load benchmark: 64 concurrent streamed completions through a release `tightwad` in front of
# real llama-servers (the test models of scripts/setup), for 5 minutes, after the same load sent
# to the target directly for 1 minute (the latency the proxy is compared with) and through a
# second proxy without a draft for 1 minute (the relay's own cost). Every answer is
# checked against the target's own greedy output; the proxy's RSS is sampled every 2 s.
#
#   benchmarks/load/run.sh [PROXY_SECONDS] [DIRECT_SECONDS]     (defaults 300 and 60)
#
# Writes benchmarks/results/load.md and benchmarks/results/load.json; exits non-zero if any
# answer through the proxy was incomplete or differed from the target's own.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

proxy_seconds="${1:-300}"
direct_seconds="${2:-60}"
eval "$(scripts/setup)"
target_dir="${CARGO_TARGET_DIR:-target}"

echo "== building tightwad and load_gen (release)" >&2
cargo build --release --locked -p tightwad --bin tightwad >&2
cargo build --release --locked -p tightwad-benchmarks --bin load_gen >&2

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL what
  for _ in $(seq 1 600); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$2 did not come up; its log:" >&2
  tail -n 30 "$work/$2.log" >&2
  exit 1
}

target_port="$(free_port)"
draft_port="$(free_port)"
proxy_port="$(free_port)"
plain_port="$(free_port)"
# The target shape the README recommends for a loaded server: 8 slots, one shared KV pool,
# no host prompt cache.
"$LLAMA_SERVER" -m "$TIGHTWAD_MODELS/target.gguf" --host 127.0.0.1 --port "$target_port" \
  -np 8 --kv-unified --cache-ram 0 -c 32768 -t 1 --metrics --no-webui >"$work/target.log" 2>&1 &
pids+=($!)
"$LLAMA_SERVER" -m "$TIGHTWAD_MODELS/draft.gguf" --host 127.0.0.1 --port "$draft_port" \
  -np 2 --kv-unified --cache-ram 0 -c 4096 -t 1 --no-webui >"$work/draft.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$target_port/health" target
wait_http "http://127.0.0.1:$draft_port/health" draft

# The defaults a user gets (the controller decides whether speculation pays), with concurrency
# limits that admit the whole load from one client.
cat >"$work/tightwad.toml" <<TOML
listen = "127.0.0.1:$proxy_port"
max_concurrent_requests = 128
max_concurrent_per_client = 128

[[pairings]]
name = "load"
target = "http://127.0.0.1:$target_port"
draft = "http://127.0.0.1:$draft_port"
TOML
RUST_LOG=warn "$target_dir/release/tightwad" proxy --config "$work/tightwad.toml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_http "http://127.0.0.1:$proxy_port/health" proxy
cat >"$work/plain.toml" <<TOML
listen = "127.0.0.1:$plain_port"
max_concurrent_requests = 128
max_concurrent_per_client = 128

[[pairings]]
name = "load"
target = "http://127.0.0.1:$target_port"
TOML
RUST_LOG=warn "$target_dir/release/tightwad" proxy --config "$work/plain.toml" >"$work/plain.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$plain_port/health" plain

mkdir -p benchmarks/results
status=0
"$target_dir/release/load_gen" --proxy "http://127.0.0.1:$proxy_port" --target "http://127.0.0.1:$target_port" \
  --concurrency 64 --seconds "$proxy_seconds" --direct-seconds "$direct_seconds" --max-tokens 32 \
  --proxy-target-only "http://127.0.0.1:$plain_port" \
  --proxy-pid "$proxy_pid" --json benchmarks/results/load.json --markdown "$work/table.md" || status=$?

{
  echo "# Load: 64 concurrent streams through tightwad"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) by \`benchmarks/load/run.sh $proxy_seconds $direct_seconds\` at commit $(git rev-parse --short HEAD) on $(nproc) CPU cores"
  echo "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); llama.cpp $(basename "$(dirname "$(dirname "$LLAMA_SERVER")")"),"
  echo "test models target.gguf / draft.gguf; target \`-np 8 --kv-unified --cache-ram 0 -c 32768 -t 1\`,"
  echo "draft \`-np 2\`; a release \`tightwad\` with the default pairing settings (adaptive)."
  echo "Latency is per request, from sending it to the end of the stream; the 64 streams share the"
  echo "target's 8 slots, so most of it is queueing at the target. Target, draft, proxy and load"
  echo "generator share the machine's cores: the draft's work (speculation, then the controller's"
  echo "shadow drafting while speculation is off) takes CPU the target would otherwise use, which a"
  echo "draft on its own host would not."
  echo
  cat "$work/table.md"
} >benchmarks/results/load.md
echo "== wrote benchmarks/results/load.md and load.json" >&2
exit "$status"
