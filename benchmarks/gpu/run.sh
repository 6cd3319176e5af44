#!/usr/bin/env bash
# The GPU benchmark of the distributed case (issue 16, item 6). Runs ON the GPU machine, in stages
# that each fit one 10-minute device call, back to back on the same warm machine:
#
#   bash .gpu/run.sh build   # llama.cpp with the bundled patches (patch -p1), CUDA sm_90:
#                            # llama-server + ggml-rpc-server; the GPU-sized models (in parallel)
#   bash .gpu/run.sh fast    # fast target (all 28 layers on the GPU), relay RTT 0.3 and 2 ms
#   bash .gpu/run.sh slow    # slow target (8 of 28 layers on the GPU, -t 16), RTT 2 and 0.3 ms
#   bash .gpu/run.sh cost    # the target and the draft server alone: where a round's time goes
#   GPU_QUANT=Q8_0 bash .gpu/run.sh fast   # the same on Q8_0 copies of the models
#
# .gpu/ is the bundle benchmarks/gpu/prepare.sh makes on the CPU machine (carry [".gpu"]): the
# pinned llama.cpp source, patches/*.patch, a vocabulary, release builds of `tightwad` and
# `lan-relay`, this script and its Python helpers, COMMIT. Results: $OUT/<stage>.tar.gz, rewritten
# after every row (the device returns at most 8 files), and one line per row on stdout.
#
# Topology (draft-side servers on the second GPU where there is one, else every server on the one
# GPU; "hosts" emulated by `lan-relay`, which delays each
# direction by RTT/2): the client and the proxy sit on one side; the target, the draft server and
# the rpc-server each sit behind their own relay. Direct requests to the target go through the
# same relay as the proxy's.
#   T  target alone (patched llama-server, --spec-draft-n-max 8)     client/proxy --relay--> T
#   D  draft llama-server (its own process)                          proxy --relay--> D
#   A  target with -md draft on ITS OWN GPU (the anchor, no network between target and draft)
#   R  ggml-rpc-server holding the draft model; N = target with -md draft on RPC0, N --relay--> R
# Rows per RTT (each `tightwad bench`: direct requests to T interleaved with the row's server):
#   md-anchor, rpc-remote (llama.cpp alone), mp-k4 (Tightwad multi-prompt rounds), op-k4, op-k8
#   (one-pass rounds, k pinned), op-adaptive, auto (draft server AND the remote-rpc native target,
#   adaptive, path chosen per request); op-k4-near, op-adaptive-near (the proxy on the target's
#   host: target on loopback, draft and client each through a relay; not in the default ROWS);
#   op-k8-pV, op-adaptive-pV (the draft's confidence stop at V instead of the proxy's default,
#   `--draft-p-min V`; V = 0: drafts run to k); op-k8-bs, op-adaptive-bs (drafts sampled on the
#   draft's GPU, `--draft-backend-sampling`); op-adaptive-base, op-k8-base (op-adaptive, op-k8 with
#   the bundle's baseline build, `prepare.sh` with PREPARE_BASE=<commit>). "Target alone" = the direct side of
#   every row.
#
# Test on a CPU machine first (tiny models, same code):
#   GPU_BENCH_CPU=1 GPU_LLAMA_SERVER=$LLAMA_SERVER GPU_RPC_SERVER=$RPC_SERVER \
#   GPU_TARGET_MODEL=... GPU_DRAFT_MODEL=... N_PROMPTS=2 MAX_TOKENS=8 bash benchmarks/gpu/run.sh fast
# LONG_CONTEXT=N puts an N-sentence preamble (~32 tokens each: 40 make 1300) before every prompt: rounds at a
# long context (what each round sends, and what the servers' replies carry, grows with it).
# PROXY_LOG sets the proxies' RUST_LOG (default info; e.g. "info,tightwad_serve::engine=debug"
# for every round's draft and verify times).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${TIGHTWAD_GPU_CARRY:-}" ]; then CARRY=$TIGHTWAD_GPU_CARRY
elif [ -x "$HERE/tightwad" ]; then CARRY=$HERE              # run from the bundle (.gpu/run.sh)
else CARRY=$(cd "$HERE/../.." && pwd)/.gpu; fi              # run from benchmarks/gpu/
# The Python helpers: beside this script in the bundle, else in the repository.
PYDIR=$HERE
WORK=${TIGHTWAD_GPU_WORK:-/root/tightwad-gpu}
STAGE=${1:-}
# GPU_QUANT=Q8_0 (or another llama-quantize type): the fast/slow/cost stages run on quantized copies
# of the generated models, results in <stage>-<type>.tar.gz. The F16 models make llama.cpp's CUDA
# back end verify several tokens with a general matrix product (its matrix-vector kernel takes
# one F16 token on an Ampere-or-later card; quantized types get it for up to 8), so verification
# is far from flat in k there, unlike the quantized models homelab users run.
QUANT=${GPU_QUANT:-}
[ -n "$QUANT" ] && [ "$STAGE" != build ] && [ "$STAGE" != ship-build ] && STAGE=$STAGE-$QUANT
OUTDIR=${OUT:-$WORK/out}
RAW=$WORK/raw/$STAGE
rm -rf "$RAW"; mkdir -p "$WORK" "$OUTDIR" "$RAW"
T0=$(date +%s)
log() { printf '[gpu %s +%ss] %s\n' "$(date +%T)" "$(( $(date +%s) - T0 ))" "$*" >&2; }

CPU=${GPU_BENCH_CPU:-}
LS=${GPU_LLAMA_SERVER:-$WORK/bin/llama-server}
RPCS=${GPU_RPC_SERVER:-$WORK/bin/ggml-rpc-server}
M_T=${GPU_TARGET_MODEL:-$WORK/models/gpu-target.gguf}
M_D=${GPU_DRAFT_MODEL:-$WORK/models/gpu-draft.gguf}
# Where the draft model runs: on a machine with two GPUs, the draft server and the rpc-servers get
# the second card (as on another host: nothing shared with the target but the relayed link); with
# one GPU they share the target's card in their own processes (kernels of both then queue on it).
if [ -n "$CPU" ]; then
  DEV_TARGET=none; DRAFT_DEV=; DRAFT_CARD="this CPU machine, own process"; SLOW_THREADS=${GPU_SLOW_THREADS:-1}
else
  DEV_TARGET=CUDA0; SLOW_THREADS=${GPU_SLOW_THREADS:-16}
  if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ] && [ -z "${GPU_ONE_CARD:-}" ]; then
    DRAFT_DEV=CUDA1; DRAFT_CARD="its own GPU (CUDA1; the target has CUDA0)"
  else
    DRAFT_DEV=CUDA0; DRAFT_CARD="the target's GPU (CUDA0), own process"
  fi
fi
RPC_DEV=(); [ -n "$DRAFT_DEV" ] && RPC_DEV=(-d "$DRAFT_DEV")
DRAFT_DEV_ARGS=(); [ -n "$DRAFT_DEV" ] && DRAFT_DEV_ARGS=(--device "$DRAFT_DEV")
# The draft server's context: 2048 tokens a slot (of 4), 4096 under LONG_CONTEXT (whose prompts
# pass 2048 at 60 sentences); the target's 6 slots share 16384 (--kv-unified).
DRAFT_CTX=8192; [ "${LONG_CONTEXT:-0}" -gt 0 ] && DRAFT_CTX=16384
SPEC=(--spec-type draft-simple --spec-draft-n-max 8 -ngld 99)

pack() { # the stage's raw files -> $OUT/<stage>.tar.gz (atomic), so a kill still returns them
  tar -czf "$OUTDIR/.$STAGE.tar.gz" -C "$RAW" . 2>/dev/null && mv "$OUTDIR/.$STAGE.tar.gz" "$OUTDIR/$STAGE.tar.gz"
}

# ------------------------------------------------------------------------------------------------
stage_build() {
  local src=$WORK/src/llama.cpp gen_pid=
  # A build shipped back by an earlier machine (stage ship-build), carried in the bundle.
  if [ ! -x "$WORK/bin/llama-server" ] && compgen -G "$CARRY/cuda-build.tar.gz.*" > /dev/null; then
    cat "$CARRY"/cuda-build.tar.gz.* | tar -xzf - -C "$WORK" && log "unpacked the carried CUDA build (no compile)"
  fi
  if [ ! -x "$WORK/bin/llama-server" ] || [ ! -x "$WORK/bin/ggml-rpc-server" ]; then
    rm -rf "$WORK/src" "$WORK/build" && mkdir -p "$WORK/src"
    tar -xzf "$CARRY/llama.cpp-src.tar.gz" -C "$WORK/src"
    # The models need only gguf-py from the tree: generate them while CUDA compiles.
    if [ ! -f "$WORK/models/gpu-target.gguf" ]; then
      log "generating models (in the background)"
      ( PYTHONPATH="$src/gguf-py" python3 "$PYDIR/gen_gpu_models.py" --vocab "$CARRY/ggml-vocab-llama-spm.gguf" \
          --out "$WORK/models.tmp" > "$RAW/models.log" 2>&1 && rm -rf "$WORK/models" && mv "$WORK/models.tmp" "$WORK/models" ) &
      gen_pid=$!
    fi
    local n=0
    for p in "$CARRY"/patches/*.patch; do
      [ -f "$p" ] || continue
      ( cd "$src" && patch -p1 --forward --batch < "$p" ) >> "$RAW/patch.log" 2>&1 \
        || { log "PATCH FAILED: $(basename "$p")"; tail -20 "$RAW/patch.log" >&2; return 1; }
      log "applied $(basename "$p") to the CUDA tree (patch -p1)"; n=$((n + 1))
    done
    [ "$n" -gt 0 ] || log "WARNING: no patches in $CARRY/patches: building STOCK llama-server"
    log "building llama.cpp (CUDA, sm_90, $n patch(es)): llama-server ggml-rpc-server"
    cmake -S "$src" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
      > "$RAW/build.log" 2>&1 || { tail -30 "$RAW/build.log" >&2; return 1; }
    cmake --build "$WORK/build" -j "$(nproc)" --target llama-server ggml-rpc-server llama-quantize >> "$RAW/build.log" 2>&1 \
      || { tail -30 "$RAW/build.log" >&2; return 1; }
    mkdir -p "$WORK/bin" && cp "$WORK/build/bin/llama-server" "$WORK/build/bin/ggml-rpc-server" "$WORK/build/bin/llama-quantize" "$WORK/bin/"
    log "build done"
  fi
  # At this llama.cpp commit the server's code sits in libllama-server-impl.so beside the binary.
  if grep -lq draft_tokens_max "$WORK/bin/llama-server" "$WORK/build/bin/"*.so* 2>/dev/null; then
    echo "patched (draft_tokens, per-request speculative.n_max, return_pieces): $(cd "$CARRY/patches" && sha256sum ./*.patch | tr '\n' ' ')" > "$RAW/llama-patched.txt"
    log "llama-server is the PATCHED build (draft_tokens)"
  else
    echo "stock" > "$RAW/llama-patched.txt"; log "WARNING: llama-server is a STOCK build"
  fi
  "$WORK/bin/llama-server" --version > "$RAW/llama-version.txt" 2>&1 || true
  tail -2 "$RAW/llama-version.txt" >&2
  if [ -n "$gen_pid" ]; then wait "$gen_pid" || { log "model generation failed"; tail -20 "$RAW/models.log" >&2; return 1; }; fi
  if [ ! -f "$WORK/models/gpu-target.gguf" ]; then
    log "generating models"
    [ -d "$WORK/src/llama.cpp/gguf-py" ] || { mkdir -p "$WORK/src" && tar -xzf "$CARRY/llama.cpp-src.tar.gz" -C "$WORK/src"; }
    PYTHONPATH="$WORK/src/llama.cpp/gguf-py" python3 "$PYDIR/gen_gpu_models.py" --vocab "$CARRY/ggml-vocab-llama-spm.gguf" \
      --out "$WORK/models.tmp" > "$RAW/models.log" 2>&1
    rm -rf "$WORK/models" && mv "$WORK/models.tmp" "$WORK/models"
  fi
  ls -la "$WORK/models" >&2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RAW/gpu.txt" 2>&1 || true
  cat "$RAW/gpu.txt" >&2
  pack
}

# ------------------------------------------------------------------------------------------------
declare -A PID_OF=()   # name -> pid of every process this script started
ALL_PIDS=()
spawn() { # name logfile cmd... (background; remembered by name)
  local name=$1 logf=$2; shift 2
  "$@" > "$logf" 2>&1 &
  PID_OF[$name]=$!; ALL_PIDS+=($!)
}
stop() { # names... : kill those processes and wait for exactly them
  local n p
  for n in "$@"; do p=${PID_OF[$n]:-}; [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for n in "$@"; do p=${PID_OF[$n]:-}; [ -n "$p" ] && wait "$p" 2>/dev/null || true; unset "PID_OF[$n]"; done
}
cleanup() { local p; for p in "${ALL_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            for p in "${ALL_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; ALL_PIDS=(); pack || true; }
trap cleanup EXIT

wait_http() { # url name logfile [seconds]
  local i
  for i in $(seq 1 $(( ${4:-180} * 5 ))); do
    curl -sf -m 2 "$1/health" >/dev/null 2>&1 && return 0; sleep 0.2
  done
  log "$2 not ready at $1"; tail -25 "$3" >&2; return 1
}

server() { # name port args... (a llama-server)
  local name=$1 port=$2; shift 2
  spawn "$name" "$RAW/server-$name.log" "$LS" --host 127.0.0.1 --port "$port" --cache-ram 0 --metrics --no-webui "$@"
}

relay() { # name listen_port to_port rtt_ms
  spawn "$1" "$RAW/relay-$1.log" "$CARRY/lan-relay" --listen "127.0.0.1:$2" --to "127.0.0.1:$3" --rtt-ms "$4"
}

proxy() { # name port target_url draft_url(or -) flags...
  local name=$1 port=$2 target=$3 draft=$4; shift 4
  local d=(); [ "$draft" != "-" ] && d=(--draft "$draft")
  RUST_LOG="${PROXY_LOG:-info}" spawn "$name" "$RAW/proxy-$name.log" "${PROXY_BIN:-$CARRY/tightwad}" proxy --listen "127.0.0.1:$port" \
    --target "$target" "${d[@]}" "$@"
  wait_http "http://127.0.0.1:$port" "proxy $name" "$RAW/proxy-$name.log" 60
}

WARM_PROMPTS=("Name three rivers of Africa." "Write a haiku about rain." "What is 17 times 23?"
  "Describe a bicycle in two sentences." "Write a SQL query that counts rows per day."
  "Give two synonyms for fast." "Explain what a hash map is." "Write a limerick about a cat.")
warm() { # url n max_tokens : unmeasured chat requests to one side only (connections, controller)
  local url=$1 n=$2 m=$3 i body
  for i in $(seq 0 $((n - 1))); do
    body=$(printf '{"model":"tightwad","messages":[{"role":"user","content":"%s"}],"max_tokens":%s,"temperature":0}' \
      "${WARM_PROMPTS[$((i % ${#WARM_PROMPTS[@]}))]}" "$m")
    curl -sf -m 120 "$url/v1/chat/completions" -H 'content-type: application/json' -d "$body" > /dev/null \
      || log "warm-up request to $url failed"
  done
}

ROW_LAST_S=30
bench() { # name "where the draft ran" proxy_url target_url bench_args...
  local name=$1 where=$2 p=$3 t=$4; shift 4
  local started; started=$(date +%s)
  echo "$where" > "$RAW/$name.where"
  log "bench $name"
  timeout "$BENCH_TIMEOUT" "$CARRY/tightwad" bench --proxy "$p" --target "$t" --json --out "$RAW/$name.json" \
    --max-tokens "$MAX_TOKENS" --prompts "$PROMPTS" --warmup "$BENCH_WARMUP" --repeats "$BENCH_REPEATS" "$@" > "$RAW/$name.txt" 2>&1 \
    || log "bench $name FAILED (rc $?): $(tail -3 "$RAW/$name.txt" | tr '\n' ' ')"
  ROW_LAST_S=$(( $(date +%s) - started ))
  python3 - "$RAW/$name.json" "$name" "$ROW_LAST_S" <<'EOF' >&2 || true
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
acc = t.get("acceptance")
print(f"  {sys.argv[2]:<28} direct {t['direct_tok_s']:7.1f} tok/s  row {t['proxy_tok_s']:7.1f} tok/s  "
      f"{t['speedup']:.2f}x  acc {'-' if acc is None else f'{acc:.2f}'}  same {t['identical_prompts']}/{t['prompts']}  ({sys.argv[3]} s)")
EOF
}

time_left() { # seconds of the stage budget left after the next row (rough: last row's time x 1.5)
  echo $(( STAGE_BUDGET_S - ($(date +%s) - T0) - ROW_LAST_S * 3 / 2 ))
}
want() { # row : in ROWS and there is time for it (sets $row)
  row=$1
  case " $ROWS " in *" $1 "*) ;; *) return 1 ;; esac
  if [ "$(time_left)" -lt 0 ]; then log "SKIPPED $1 at RTT $RTT ms: stage budget ($STAGE_BUDGET_S s) nearly spent"; echo "$1 rtt $RTT" >> "$RAW/skipped.txt"; return 1; fi
}

base_ready() { # the bundle carries a baseline build (prepare.sh PREPARE_BASE=<commit>)
  [ -x "$CARRY/tightwad-base" ] && [ -f "$CARRY/BASE_COMMIT" ] && return 0
  log "SKIPPED $row: no tightwad-base in the bundle (prepare.sh with PREPARE_BASE=<commit>)"; return 1
}

stats() { curl -sf -m 5 "$1/v1/tightwad/stats" > "$RAW/$2-stats.json" || log "no stats from $1"; }
# A llama-server's counters (its own speculation: drafted/accepted) around a row, read directly.
metrics() { curl -sf -m 5 "http://127.0.0.1:$1/metrics" > "$RAW/$2-metrics-$3.txt" 2>/dev/null || true; }

use_quant() { # point M_T/M_D at GPU_QUANT copies of the generated models (made once)
  [ -n "$QUANT" ] || return 0
  local m q
  for m in target draft; do
    q=$WORK/models/gpu-$m-$QUANT.gguf
    if [ ! -f "$q" ]; then
      "$WORK/bin/llama-quantize" "$WORK/models/gpu-$m.gguf" "$q.tmp" "$QUANT" > "$RAW/quantize-$m.log" 2>&1 \
        && mv "$q.tmp" "$q" || { log "quantizing $m to $QUANT failed"; tail -5 "$RAW/quantize-$m.log" >&2; return 1; }
    fi
  done
  M_T=$WORK/models/gpu-target-$QUANT.gguf; M_D=$WORK/models/gpu-draft-$QUANT.gguf
  log "models: $QUANT copies ($(basename "$M_T"), $(basename "$M_D"))"
}

# ------------------------------------------------------------------------------------------------
stage_bench() { # fast|slow
  local kind=$1 tflags
  if [ ! -x "$LS" ] || [ ! -f "$M_T" ]; then
    log "no llama-server/models here (a fresh machine?): building first"; stage_build
  fi
  use_quant
  [ -f "$CARRY/COMMIT" ] && cp "$CARRY/COMMIT" "$RAW/COMMIT"
  [ -f "$CARRY/BASE_COMMIT" ] && cp "$CARRY/BASE_COMMIT" "$RAW/BASE_COMMIT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RAW/gpu.txt" 2>/dev/null || echo "cpu ($(nproc) cores)" > "$RAW/gpu.txt"
  if [ "$kind" = fast ]; then
    tflags=(-ngl 99); : "${RTTS:=0.3 2}"; : "${N_PROMPTS:=10}"; : "${MAX_TOKENS:=96}"
    : "${BENCH_WARMUP:=1}"; : "${WARM_ADAPTIVE:=8}"; : "${WARM_TOKENS:=$MAX_TOKENS}"; : "${BENCH_TIMEOUT:=150}"
    # Two direct/proxied pairs a prompt: a 96-token answer takes a third of a second here, and
    # single pairs left the ratios of rows that serve the target alone ±2% apart on noise.
    : "${BENCH_REPEATS:=2}"
    : "${EXACTNESS:=1}"
  else
    tflags=(-ngl 8 -t "$SLOW_THREADS"); : "${RTTS:=2 0.3}"; : "${N_PROMPTS:=4}"; : "${MAX_TOKENS:=64}"
    : "${BENCH_WARMUP:=0}"; : "${WARM_ADAPTIVE:=8}"; : "${WARM_TOKENS:=24}"; : "${BENCH_TIMEOUT:=200}"
    : "${BENCH_REPEATS:=1}"
    : "${EXACTNESS:=0}"
  fi
  : "${STAGE_BUDGET_S:=510}"
  : "${ROWS:=rpc-remote md-anchor op-adaptive auto op-k4 op-k8 mp-k4}"
  # The adaptive row's cap on k (`--draft-tokens`): the controller chooses k up to it, and on the
  # fast target only k = 8 paid (1.10x pinned at d086d11). The auto row runs the proxy's defaults:
  # unset, the cap follows the path (8 one-pass, 4 native); it ran with a cap of 4 until de1db6e,
  # where the fast target's rounds predicted 0.76x.
  : "${ADAPTIVE_K_MAX:=8}"
  PROMPTS=$RAW/prompts.txt
  printf '%s\n' "What is the capital of France, and what river runs through it?" \
    "Write a Python function that returns the n-th Fibonacci number iteratively." \
    "Write a short poem about a lighthouse keeper at dawn." \
    "If a train leaves at 3 pm and travels 120 km at 80 km/h, when does it arrive? Explain step by step." \
    "List ten common fruits, one per line." \
    "Explain in a few sentences how a refrigerator keeps food cold." \
    "Write a Rust function that reverses the words of a sentence." \
    "Begin a story about a cat who finds a key in the garden." \
    "A farmer has 17 sheep and all but 9 run away. How many are left? Think it through." \
    "List the planets of the solar system in order from the sun." | head -n "$N_PROMPTS" > "$PROMPTS"
  # LONG_CONTEXT=N: every prompt after the same N-sentence preamble (~32 tokens a sentence), so each
  # round sends and the servers hold a long context, as a chat with history or a document does.
  if [ "${LONG_CONTEXT:-0}" -gt 0 ]; then
    local preamble
    preamble=$(for i in $(seq 1 "$LONG_CONTEXT"); do
      printf 'Note %s: the ledger for shipment %s lists %s crates of apples and %s of pears. ' \
        "$i" "$((i * 37 % 1000))" "$((i * 13 % 97))" "$((i * 7 % 89))"; done)
    sed -i "s|^|$preamble Now answer: |" "$PROMPTS"
  fi
  cat > "$RAW/config.txt" <<EOF
stage=$kind
models=$(basename "$M_T") $(basename "$M_D")
target_flags=${tflags[*]}
rtts_ms=$RTTS
prompts=$N_PROMPTS
long_context_sentences=${LONG_CONTEXT:-0}
max_tokens=$MAX_TOKENS
bench_warmup_pairs=$BENCH_WARMUP
bench_repeats=$BENCH_REPEATS
proxy_warmup_adaptive=$WARM_ADAPTIVE x $WARM_TOKENS tokens
rows=$ROWS
cpu_test=${CPU:-0}
EOF
  local tgt=(-m "$M_T" "${tflags[@]}" -np 6 --kv-unified -c 16384)
  # --- servers, all started at once --------------------------------------------------------------
  log "starting servers ($kind target)"
  server T 9001 "${tgt[@]}" --spec-draft-n-max 8
  server D 9002 -m "$M_D" -ngl 99 -np 4 -c "$DRAFT_CTX" "${DRAFT_DEV_ARGS[@]}"
  case " $ROWS " in *" md-anchor "*) server A 9003 "${tgt[@]}" -md "$M_D" "${SPEC[@]}" ;; esac
  local i=0 rtt
  for rtt in $RTTS; do
    i=$((i + 1))
    spawn "R$i" "$RAW/rpc-$i.log" "$RPCS" -H 127.0.0.1 -p "$((9500 + i))" "${RPC_DEV[@]}"
  done
  sleep 1
  i=0
  for rtt in $RTTS; do
    i=$((i + 1))
    relay "rR$i" "$((9510 + i))" "$((9500 + i))" "$rtt"
  done
  sleep 0.5
  i=0
  for rtt in $RTTS; do
    i=$((i + 1))
    server "N$i" "$((9003 + i))" "${tgt[@]}" -md "$M_D" "${SPEC[@]}" --rpc "127.0.0.1:$((9510 + i))" \
      --device "$DEV_TARGET" -devd RPC0
  done
  wait_http http://127.0.0.1:9001 T "$RAW/server-T.log"
  wait_http http://127.0.0.1:9002 D "$RAW/server-D.log"
  case " $ROWS " in *" md-anchor "*) wait_http http://127.0.0.1:9003 A "$RAW/server-A.log" ;; esac
  i=0; for rtt in $RTTS; do i=$((i + 1)); wait_http "http://127.0.0.1:$((9003 + i))" "N$i" "$RAW/server-N$i.log" 300; done
  log "servers up"
  # The target's own word on the patch: /props capabilities (draft_tokens, draft_tokens_max).
  curl -sf http://127.0.0.1:9001/props > "$RAW/props-T.json" || true
  python3 - "$RAW/props-T.json" > "$RAW/llama-patched.txt" <<'EOF' || echo "unknown (no /props)" > "$RAW/llama-patched.txt"
import json, sys
c = json.load(open(sys.argv[1])).get("capabilities") or {}
print(f"patched (/props capabilities {json.dumps(c)})" if c.get("draft_tokens") else f"STOCK (/props capabilities {json.dumps(c)})")
EOF
  log "T: $(cat "$RAW/llama-patched.txt")"
  # --- rows, per RTT ---------------------------------------------------------------------------
  i=0
  for RTT in $RTTS; do
    i=$((i + 1))
    local tag=${RTT/./_} b=$((9100 + 100 * i)) S=$kind
    relay "rT$i" "$((b + 1))" 9001 "$RTT"; relay "rD$i" "$((b + 2))" 9002 "$RTT"
    relay "rA$i" "$((b + 3))" 9003 "$RTT"; relay "rN$i" "$((b + 4))" "$((9003 + i))" "$RTT"
    sleep 0.5
    local rT=http://127.0.0.1:$((b + 1)) rD=http://127.0.0.1:$((b + 2)) rA=http://127.0.0.1:$((b + 3)) rN=http://127.0.0.1:$((b + 4))
    local pp=$((b + 50))
    # What this RTT's relay really adds on this machine (its own hops and late wakes on top of the
    # nominal figure): the table states both.
    python3 "$PYDIR/relay_rtt.py" --relay-bin "$CARRY/lan-relay" --rtt-ms "$RTT" > "$RAW/relay-rtt$tag.json" \
      || rm -f "$RAW/relay-rtt$tag.json"
    warm "$rT" 1 8
    if want rpc-remote; then
      warm "$rN" 1 16; metrics "$((9003 + i))" "$S-rpc-remote-rtt$tag" before
      bench "$S-rpc-remote-rtt$tag" "llama.cpp -md, draft on a ggml-rpc-server on $DRAFT_CARD behind the ${RTT} ms relay; the target drives it over RPC" \
        "$rN" "$rT" --prime "$rN"; metrics "$((9003 + i))" "$S-rpc-remote-rtt$tag" after; pack
    fi
    if want md-anchor; then
      warm "$rA" 1 16; metrics 9003 "$S-md-anchor-rtt$tag" before
      bench "$S-md-anchor-rtt$tag" "llama.cpp -md, draft on the target's own GPU in the target's process (anchor)" \
        "$rA" "$rT" --prime "$rA"; metrics 9003 "$S-md-anchor-rtt$tag" after; pack
    fi
    if want op-adaptive; then
      proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --draft-tokens "$ADAPTIVE_K_MAX"
      warm "http://127.0.0.1:$pp" "$WARM_ADAPTIVE" "$WARM_TOKENS"
      bench "$S-op-adaptive-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, adaptive, k <= $ADAPTIVE_K_MAX" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-adaptive-rtt$tag"; stop "P$i-$row"; pack
    fi
    # The same row with the bundle's baseline build (prepare.sh with PREPARE_BASE=<commit>), in the
    # same run: a change measured against what it replaced on one machine, minutes apart.
    if want op-adaptive-base && base_ready; then
      PROXY_BIN=$CARRY/tightwad-base proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --draft-tokens "$ADAPTIVE_K_MAX"
      warm "http://127.0.0.1:$pp" "$WARM_ADAPTIVE" "$WARM_TOKENS"
      bench "$S-op-adaptive-base-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, adaptive, k <= $ADAPTIVE_K_MAX; baseline build $(cat "$CARRY/BASE_COMMIT")" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-adaptive-base-rtt$tag"; stop "P$i-$row"; pack
    fi
    if want auto; then
      proxy "P$i-$row" "$pp" "$rN" "$rD" --native
      warm "http://127.0.0.1:$pp" "$WARM_ADAPTIVE" "$WARM_TOKENS"; metrics "$((9003 + i))" "$S-auto-rtt$tag" before
      bench "$S-auto-rtt$tag" "both: draft llama-server (rounds) and the target's -md draft on the rpc-server (native), each on $DRAFT_CARD behind the relay; chosen per request" \
        "http://127.0.0.1:$pp" "$rT" --prime "$rN"; stats "http://127.0.0.1:$pp" "$S-auto-rtt$tag"
      metrics "$((9003 + i))" "$S-auto-rtt$tag" after; stop "P$i-$row"; pack
    fi
    if want op-k4; then
      proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --no-adaptive --draft-tokens 4
      warm "http://127.0.0.1:$pp" 1 16
      bench "$S-op-k4-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, k=4 pinned" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-k4-rtt$tag"
      if [ "$EXACTNESS" = 1 ] && [ ! -f "$RAW/exactness.json" ]; then
        log "exactness on the GPU: one-pass rounds k=4 (and llama.cpp's own -md) vs the target alone (direct, no relay)"
        local anchor=(); case " $ROWS " in *" md-anchor "*) anchor=(--anchor http://127.0.0.1:9003) ;; esac
        timeout 180 python3 "$PYDIR/exactness.py" --proxy "http://127.0.0.1:$pp" --target http://127.0.0.1:9001 "${anchor[@]}" \
          --max-tokens "${EXACT_TOKENS:-64}" ${EXACT_PROMPTS:+--limit "$EXACT_PROMPTS"} --out "$RAW/exactness.json" > "$RAW/exactness.log" 2>&1 \
          || log "exactness script failed: $(tail -3 "$RAW/exactness.log" | tr '\n' ' ')"
        tail -1 "$RAW/exactness.log" >&2 || true
      fi
      stop "P$i-$row"; pack
    fi
    # The proxy on the TARGET's host (the deployment README recommends for fast targets): the
    # proxy reaches the target on loopback and only the draft across the relay; the client reaches
    # the proxy through its own relay with the same RTT, as direct requests reach the target.
    case " $ROWS " in *" op-k4-near "*|*" op-adaptive-near "*) relay "rP$i" "$((b + 60))" "$pp" "$RTT" ;; esac
    if want op-k4-near; then
      proxy "P$i-$row" "$pp" http://127.0.0.1:9001 "$rD" --verify one-pass --no-adaptive --draft-tokens 4
      warm "http://127.0.0.1:$((b + 60))" 1 16
      bench "$S-op-k4-near-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; the proxy on the target's host (target on loopback, the client through a ${RTT} ms relay); Tightwad one-pass rounds, k=4 pinned" \
        "http://127.0.0.1:$((b + 60))" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-k4-near-rtt$tag"; stop "P$i-$row"; pack
    fi
    if want op-adaptive-near; then
      proxy "P$i-$row" "$pp" http://127.0.0.1:9001 "$rD" --verify one-pass --draft-tokens "$ADAPTIVE_K_MAX"
      warm "http://127.0.0.1:$((b + 60))" "$WARM_ADAPTIVE" "$WARM_TOKENS"
      bench "$S-op-adaptive-near-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; the proxy on the target's host (target on loopback, the client through a ${RTT} ms relay); Tightwad one-pass rounds, adaptive, k <= $ADAPTIVE_K_MAX" \
        "http://127.0.0.1:$((b + 60))" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-adaptive-near-rtt$tag"; stop "P$i-$row"; pack
    fi
    if want op-k8; then
      proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --no-adaptive --draft-tokens 8
      warm "http://127.0.0.1:$pp" 1 16
      bench "$S-op-k8-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, k=8 pinned" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-k8-rtt$tag"; stop "P$i-$row"; pack
    fi
    if want op-k8-base && base_ready; then
      PROXY_BIN=$CARRY/tightwad-base proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --no-adaptive --draft-tokens 8
      warm "http://127.0.0.1:$pp" 1 16
      bench "$S-op-k8-base-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, k=8 pinned; baseline build $(cat "$CARRY/BASE_COMMIT")" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-op-k8-base-rtt$tag"; stop "P$i-$row"; pack
    fi
    # Rows that ask for drafts otherwise than the proxy's default: the draft's confidence stop
    # (`--draft-p-min V`, 0 = drafts run to k) as op-k8-pV (k = 8 pinned), op-adaptive-pV; drafts
    # sampled on the draft's GPU (`--draft-backend-sampling`) as op-k8-bs, op-adaptive-bs.
    # E.g. ROWS="op-k8 op-k8-bs op-k8-p0.3".
    local r how
    for r in $ROWS; do
      case $r in op-k8-p*|op-adaptive-p*|op-k8-bs|op-adaptive-bs) ;; *) continue ;; esac
      want "$r" || continue
      local asked=()
      if [ "${r##*-}" = bs ]; then
        asked=(--draft-backend-sampling); how="drafts sampled on the draft's GPU"
      else
        asked=(--draft-p-min "${r##*-p}"); how="draft_p_min ${r##*-p}"
      fi
      if [ "${r%-*}" = op-k8 ]; then
        proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --no-adaptive --draft-tokens 8 "${asked[@]}"
        warm "http://127.0.0.1:$pp" 1 16
        bench "$S-$r-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, k=8 pinned, $how" \
          "http://127.0.0.1:$pp" "$rT"
      else
        proxy "P$i-$row" "$pp" "$rT" "$rD" --verify one-pass --draft-tokens "$ADAPTIVE_K_MAX" "${asked[@]}"
        warm "http://127.0.0.1:$pp" "$WARM_ADAPTIVE" "$WARM_TOKENS"
        bench "$S-$r-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad one-pass rounds, adaptive, k <= $ADAPTIVE_K_MAX, $how" \
          "http://127.0.0.1:$pp" "$rT"
      fi
      stats "http://127.0.0.1:$pp" "$S-$r-rtt$tag"; stop "P$i-$row"; pack
    done
    if want mp-k4; then
      proxy "P$i-$row" "$pp" "$rT" "$rD" --verify multi-prompt --no-adaptive --draft-tokens 4
      warm "http://127.0.0.1:$pp" 1 16
      bench "$S-mp-k4-rtt$tag" "draft llama-server on $DRAFT_CARD behind the ${RTT} ms relay; Tightwad multi-prompt rounds (k+1 prompts), k=4 pinned" \
        "http://127.0.0.1:$pp" "$rT"; stats "http://127.0.0.1:$pp" "$S-mp-k4-rtt$tag"; stop "P$i-$row"; pack
    fi
    stop "rT$i" "rD$i" "rA$i" "rN$i" "rP$i"
  done
  log "done ($kind)"
  pack
}

# Where a one-pass round's time goes on the fast target: the target and the draft server alone,
# no proxy, no relay (verify_cost.py: decode step, verify k=1..8 with n_probs 0/1, draft n=1..8,
# with and without the draft server busy on the same card).
stage_cost() {
  if [ ! -x "$LS" ] || [ ! -f "$M_T" ]; then stage_build; fi
  use_quant
  [ -f "$CARRY/COMMIT" ] && cp "$CARRY/COMMIT" "$RAW/COMMIT"
  [ -f "$CARRY/BASE_COMMIT" ] && cp "$CARRY/BASE_COMMIT" "$RAW/BASE_COMMIT"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$RAW/gpu.txt" 2>/dev/null || echo "cpu ($(nproc) cores)" > "$RAW/gpu.txt"
  server T 9001 -m "$M_T" -ngl 99 -np 6 --kv-unified -c 16384 --spec-draft-n-max 8
  server D 9002 -m "$M_D" -ngl 99 -np 4 -c "$DRAFT_CTX" "${DRAFT_DEV_ARGS[@]}"
  wait_http http://127.0.0.1:9001 T "$RAW/server-T.log"
  wait_http http://127.0.0.1:9002 D "$RAW/server-D.log"
  log "verify cost: target and draft server alone (draft on $DRAFT_CARD)"
  echo "$DRAFT_CARD" > "$RAW/cost.where"
  timeout 240 python3 "$PYDIR/verify_cost.py" --target http://127.0.0.1:9001 --draft http://127.0.0.1:9002 \
    --reps "${COST_REPS:-40}" --out "$RAW/cost.json" 2>&1 | tee "$RAW/cost.txt" >&2 || log "verify_cost failed"
  pack
}

# The CUDA build as a tarball in $OUT (pieces of 15 MB: the device returns at most 8 files of
# 16 MB), so a later fresh machine can skip the ~6-minute build: carry it back and unpack it.
stage_ship_build() {
  tar -C "$WORK" -czf - bin build/bin | split -b 15m - "$OUTDIR/cuda-build.tar.gz."
  ls -la "$OUTDIR" >&2
}

# The SIMULATION grid (no GPU involved) on this machine's idle cores: ratios only. Needs
# bench-suite in the bundle (PREPARE_BENCH_SUITE=1 benchmarks/gpu/prepare.sh).
stage_sim() {
  log "simulation grid, $(nproc) cores"
  "$CARRY/bench-suite" --only sim-grid,sim-k-sweep --jobs "${SIM_JOBS:-8}" --results "$RAW/sim" \
    > "$RAW/sim-suite.log" 2>&1 || log "sim grid failed: $(tail -3 "$RAW/sim-suite.log")"
  pack
}

case "$STAGE" in
  build) stage_build ;;
  fast|fast-*) stage_bench fast ;;
  slow|slow-*) stage_bench slow ;;
  sim) stage_sim ;;
  cost|cost-*) stage_cost ;;
  ship-build) stage_ship_build ;;
  *) echo "usage: $0 build|fast|slow|sim|cost|ship-build" >&2; exit 2 ;;
esac
