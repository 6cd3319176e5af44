#!/usr/bin/env bash
# The GPU benchmark (issue "Measured on a real GPU"). Runs ON the GPU machine, in two stages that
# each fit one 10-minute device call:
#
#   benchmarks/gpu/run.sh build   # CUDA build of llama.cpp from the same pinned source as
#                                 # scripts/setup (shipped stripped in .gpu/), GPU-sized models
#   benchmarks/gpu/run.sh bench   # every scenario; JSON + logs into $OUT (or ./gpu-out)
#
# It needs, carried in .gpu/ (made on the CPU machine by benchmarks/gpu/prepare.sh):
#   llama.cpp-src.tar.gz, ggml-vocab-llama-spm.gguf, tightwad, lan-relay, bench-suite (release builds).
# Scenarios, each direct-to-target vs through-the-proxy in the same run (`tightwad bench`):
#   fast target (all layers on the GPU): passthrough, proxy adaptive, proxy forced k=4, native
#     pairing (llama.cpp's own speculation) steered by the proxy; LAN emulator at 0.3 and 2 ms RTT;
#   slow target (most layers in host RAM, like the field report's 48 GB GPU + RAM box): proxy forced,
#     proxy adaptive, native; 2 ms RTT;
#   both: "auto" — a draft server AND a natively paired target; the controller picks the path per
#     request (after 8 warm-up requests in which it tries both);
#   exactness on the GPU: proxy tokens vs the target alone, with the top-two margin at every
#     divergence.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
WORK=${TIGHTWAD_GPU_WORK:-/root/tightwad-gpu}
OUTDIR=${OUT:-$REPO/gpu-out}
CARRY=$REPO/.gpu
mkdir -p "$WORK" "$OUTDIR"
log() { printf '[gpu %s] %s\n' "$(date +%T)" "$*" >&2; }

stage_build() {
  if [ ! -x "$WORK/bin/llama-server" ]; then
    log "building llama.cpp (CUDA, sm_90)"
    rm -rf "$WORK/src" && mkdir -p "$WORK/src"
    tar -xzf "$CARRY/llama.cpp-src.tar.gz" -C "$WORK/src"
    cmake -S "$WORK/src/llama.cpp" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
      > "$OUTDIR/build.log" 2>&1
    cmake --build "$WORK/build" -j "$(nproc)" --target llama-server ggml-rpc-server >> "$OUTDIR/build.log" 2>&1
    mkdir -p "$WORK/bin" && cp "$WORK/build/bin/llama-server" "$WORK/build/bin/ggml-rpc-server" "$WORK/bin/"
  fi
  "$WORK/bin/llama-server" --version 2>&1 | tail -2 | tee "$OUTDIR/llama-version.txt" >&2
  if [ ! -f "$WORK/models/gpu-target.gguf" ]; then
    log "generating models"
    PYTHONPATH="$WORK/src/llama.cpp/gguf-py" python3 benchmarks/gpu/gen_gpu_models.py \
      --vocab "$CARRY/ggml-vocab-llama-spm.gguf" --out "$WORK/models.tmp" > "$OUTDIR/models.log" 2>&1
    mv "$WORK/models.tmp" "$WORK/models"
  fi
  ls -la "$WORK/models" >&2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTDIR/gpu.txt" >&2
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

wait_http() { # url name logfile
  for _ in $(seq 1 600); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "$2 not ready"; tail -20 "$3" >&2; return 1
}

start_server() { # name port logfile args...
  local name=$1 port=$2 logf=$3; shift 3
  "$WORK/bin/llama-server" --host 127.0.0.1 --port "$port" --cache-ram 0 --metrics --no-webui "$@" > "$logf" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port" "$name" "$logf"
}

relay() { # listen_port to_port rtt_ms
  "$CARRY/lan-relay" --listen "127.0.0.1:$1" --to "127.0.0.1:$2" --rtt-ms "$3" > /dev/null 2>&1 &
  PIDS+=($!)
  sleep 0.3
}

proxy() { # port target_url draft_url(or -) extra flags...
  local port=$1 target=$2 draft=$3; shift 3
  local d=(); [ "$draft" != "-" ] && d=(--draft "$draft")
  RUST_LOG=info "$CARRY/tightwad" proxy --listen "127.0.0.1:$port" --target "$target" "${d[@]}" "$@" \
    > "$OUTDIR/proxy-$port.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port" proxy "$OUTDIR/proxy-$port.log"
}

bench() { # name proxy_url target_url prompts_args...
  local name=$1 p=$2 t=$3; shift 3
  log "bench $name"
  "$CARRY/tightwad" bench --proxy "$p" --target "$t" --json "$OUTDIR/$name.json" "$@" \
    > "$OUTDIR/$name.txt" 2>&1 || log "bench $name failed: $(tail -3 "$OUTDIR/$name.txt")"
  tail -4 "$OUTDIR/$name.txt" >&2 || true
}

stage_bench() {
  local M=$WORK/models
  # --- fast target: everything on the GPU -----------------------------------------------------
  start_server target 9001 "$OUTDIR/target-fast.log" -m "$M/gpu-target.gguf" -ngl 99 -np 6 --kv-unified -c 32768
  start_server draft 9002 "$OUTDIR/draft.log" -m "$M/gpu-draft.gguf" -ngl 99 -np 2 -c 8192
  start_server native 9003 "$OUTDIR/target-native.log" -m "$M/gpu-target.gguf" -ngl 99 -np 6 --kv-unified -c 32768 \
    -md "$M/gpu-draft.gguf" -ngld 99 --spec-type draft-simple
  for rtt in 0.3 2; do
    local tag=${rtt/./_}
    relay 9101 9001 "$rtt"; relay 9102 9002 "$rtt"; relay 9103 9003 "$rtt"
    proxy 9201 "http://127.0.0.1:9101" - ; bench "fast-passthrough-rtt$tag" http://127.0.0.1:9201 http://127.0.0.1:9101 --max-tokens 96
    proxy 9202 "http://127.0.0.1:9101" "http://127.0.0.1:9102" ; bench "fast-adaptive-rtt$tag" http://127.0.0.1:9202 http://127.0.0.1:9101 --max-tokens 96
    proxy 9203 "http://127.0.0.1:9101" "http://127.0.0.1:9102" --no-adaptive --draft-tokens 4 ; bench "fast-forced-k4-rtt$tag" http://127.0.0.1:9203 http://127.0.0.1:9101 --max-tokens 96
    proxy 9204 "http://127.0.0.1:9103" - --native --no-adaptive --draft-tokens 8 ; bench "fast-native-rtt$tag" http://127.0.0.1:9204 http://127.0.0.1:9101 --max-tokens 96
    # Both paths (draft server for proxy rounds, native pairing in the target): the controller
    # picks per request. 8 warm-up requests: the path chooser tries each path 3 times first.
    proxy 9205 "http://127.0.0.1:9103" "http://127.0.0.1:9102" --native --draft-tokens 8 ; bench "fast-auto-rtt$tag" http://127.0.0.1:9205 http://127.0.0.1:9101 --max-tokens 96 --warmup 8
    curl -s http://127.0.0.1:9205/v1/tightwad/stats > "$OUTDIR/fast-auto-rtt$tag-stats.json" || true
    if [ "$rtt" = 2 ]; then
      log "exactness on the GPU (forced speculation, k=4)"
      python3 benchmarks/gpu/exactness.py --proxy http://127.0.0.1:9203 --target http://127.0.0.1:9001 \
        --max-tokens 64 --out "$OUTDIR/exactness.json" >&2 || log "exactness script failed"
    fi
    cleanup_relays_and_proxies
  done
  cleanup
  # --- slow target: 8 of 28 layers on the GPU, the rest in host RAM ---------------------------
  start_server target-slow 9011 "$OUTDIR/target-slow.log" -m "$M/gpu-target.gguf" -ngl 8 -np 6 --kv-unified -c 16384 -t 16
  start_server draft 9002 "$OUTDIR/draft2.log" -m "$M/gpu-draft.gguf" -ngl 99 -np 2 -c 8192
  start_server native-slow 9013 "$OUTDIR/target-native-slow.log" -m "$M/gpu-target.gguf" -ngl 8 -np 6 --kv-unified -c 16384 -t 16 \
    -md "$M/gpu-draft.gguf" -ngld 99 --spec-type draft-simple
  relay 9111 9011 2; relay 9102 9002 2; relay 9113 9013 2
  printf '%s\n' "Explain why the sky is blue." "Write a Python function that reverses a linked list." \
    "List five capitals of Europe." "Tell a short story about a lighthouse keeper." > "$WORK/slow-prompts.txt"
  proxy 9211 "http://127.0.0.1:9111" "http://127.0.0.1:9102" --no-adaptive --draft-tokens 4 ; bench slow-forced-k4-rtt2 http://127.0.0.1:9211 http://127.0.0.1:9111 --max-tokens 64 --prompts "$WORK/slow-prompts.txt"
  proxy 9212 "http://127.0.0.1:9111" "http://127.0.0.1:9102" ; bench slow-adaptive-rtt2 http://127.0.0.1:9212 http://127.0.0.1:9111 --max-tokens 64 --prompts "$WORK/slow-prompts.txt"
  proxy 9213 "http://127.0.0.1:9113" - --native --no-adaptive --draft-tokens 8 ; bench slow-native-rtt2 http://127.0.0.1:9213 http://127.0.0.1:9111 --max-tokens 64 --prompts "$WORK/slow-prompts.txt"
  proxy 9214 "http://127.0.0.1:9113" "http://127.0.0.1:9102" --native --draft-tokens 8 ; bench slow-auto-rtt2 http://127.0.0.1:9214 http://127.0.0.1:9111 --max-tokens 64 --prompts "$WORK/slow-prompts.txt" --warmup 8
  curl -s http://127.0.0.1:9214/v1/tightwad/stats > "$OUTDIR/slow-auto-rtt2-stats.json" || true
  cleanup
  log "done"
}

cleanup_relays_and_proxies() {
  pkill -f "$CARRY/lan-relay" 2>/dev/null || true
  pkill -f "$CARRY/tightwad proxy" 2>/dev/null || true
  sleep 0.5
}

# Only the "auto" scenarios (both paths, chosen per request), fast and slow target, 2 ms RTT.
stage_auto() {
  local M=$WORK/models
  start_server target 9001 "$OUTDIR/target-fast.log" -m "$M/gpu-target.gguf" -ngl 99 -np 6 --kv-unified -c 32768
  start_server draft 9002 "$OUTDIR/draft.log" -m "$M/gpu-draft.gguf" -ngl 99 -np 2 -c 8192
  start_server native 9003 "$OUTDIR/target-native.log" -m "$M/gpu-target.gguf" -ngl 99 -np 6 --kv-unified -c 32768 \
    -md "$M/gpu-draft.gguf" -ngld 99 --spec-type draft-simple
  relay 9101 9001 2; relay 9102 9002 2; relay 9103 9003 2
  proxy 9205 "http://127.0.0.1:9103" "http://127.0.0.1:9102" --native --draft-tokens 8 ; bench "fast-auto-rtt2" http://127.0.0.1:9205 http://127.0.0.1:9101 --max-tokens 96 --warmup 8
  curl -s http://127.0.0.1:9205/v1/tightwad/stats > "$OUTDIR/fast-auto-rtt2-stats.json" || true
  cleanup
  start_server target-slow 9011 "$OUTDIR/target-slow.log" -m "$M/gpu-target.gguf" -ngl 8 -np 6 --kv-unified -c 16384 -t 16
  start_server draft 9002 "$OUTDIR/draft2.log" -m "$M/gpu-draft.gguf" -ngl 99 -np 2 -c 8192
  start_server native-slow 9013 "$OUTDIR/target-native-slow.log" -m "$M/gpu-target.gguf" -ngl 8 -np 6 --kv-unified -c 16384 -t 16 \
    -md "$M/gpu-draft.gguf" -ngld 99 --spec-type draft-simple
  relay 9111 9011 2; relay 9102 9002 2; relay 9113 9013 2
  printf '%s\n' "Explain why the sky is blue." "Write a Python function that reverses a linked list." \
    "List five capitals of Europe." "Tell a short story about a lighthouse keeper." > "$WORK/slow-prompts.txt"
  proxy 9214 "http://127.0.0.1:9113" "http://127.0.0.1:9102" --native --draft-tokens 8 ; bench slow-auto-rtt2 http://127.0.0.1:9214 http://127.0.0.1:9111 --max-tokens 64 --prompts "$WORK/slow-prompts.txt" --warmup 8
  curl -s http://127.0.0.1:9214/v1/tightwad/stats > "$OUTDIR/slow-auto-rtt2-stats.json" || true
  cleanup
  log "done"
}

# The SIMULATION grid (no GPU involved) on this machine's idle cores: ratios only, several points
# at once (they mostly sleep). Needs bench-suite in .gpu/.
stage_sim() {
  log "simulation grid, $(nproc) cores"
  "$CARRY/bench-suite" --only sim-grid,sim-k-sweep --jobs "${SIM_JOBS:-8}" --results "$OUTDIR/sim" \
    > "$OUTDIR/sim-suite.log" 2>&1 || log "sim grid failed: $(tail -3 "$OUTDIR/sim-suite.log")"
}

case "${1:-}" in
  build) stage_build ;;
  bench) stage_bench ;;
  sim) stage_sim ;;
  auto) stage_auto ;;
  *) echo "usage: $0 build|bench|sim|auto" >&2; exit 2 ;;
esac
