#!/usr/bin/env bash
# Make the bundle for benchmarks/gpu/run.sh on the GPU machine, on the CPU machine:
#   the pinned llama.cpp tree stripped to what a CUDA build needs (~11 MB), patches/llama.cpp/*.patch
#   (run.sh build applies them with `patch -p1`, so the GPU llama-server is the patched one), a
#   vocabulary file for the model generator, release builds of `tightwad` and `lan-relay`
#   (`bench-suite` too with PREPARE_BENCH_SUITE=1, for `run.sh sim`), run.sh and its Python helpers,
#   and COMMIT (the commit these were built from).
#
#   benchmarks/gpu/prepare.sh [BUNDLE_DIR]     # default: .gpu/ in this checkout (git-ignored)
#
# The device tool sends the checkout its session started in, plus the carried paths: put the bundle
# at <that checkout>/.gpu, then run `bash .gpu/run.sh build`, `bash .gpu/run.sh fast` and
# `bash .gpu/run.sh slow` back to back with carry [".gpu"] (a fresh machine means a fresh build);
# unpack the returned <stage>.tar.gz files and run benchmarks/gpu/summarize.py on them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$(pwd)
BUNDLE=${1:-$REPO/.gpu}
eval "$(scripts/setup)"

CACHE="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}"
VENDOR=$(ls -d "$CACHE"/src/llama-cpp-python-*/vendor | head -1)
mkdir -p "$BUNDLE"
BUNDLE=$(cd "$BUNDLE" && pwd)
# Keep the bundle out of git where it sits at the top of a checkout.
top=$(git -C "$(dirname "$BUNDLE")" rev-parse --show-toplevel 2>/dev/null || true)
if [ -n "$top" ] && [ "$top/$(basename "$BUNDLE")" = "$BUNDLE" ]; then
  exclude=$(git -C "$top" rev-parse --path-format=absolute --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx "/$(basename "$BUNDLE")/" "$exclude" 2>/dev/null || echo "/$(basename "$BUNDLE")/" >> "$exclude"
fi
tar -C "$VENDOR" --exclude='llama.cpp/build*' --exclude='llama.cpp/docs' --exclude='llama.cpp/media' \
  --exclude='llama.cpp/benches' --exclude='llama.cpp/models/*.gguf' --exclude='llama.cpp/models/*.inp' \
  --exclude='llama.cpp/models/*.out' --exclude='llama.cpp/.git*' --exclude='llama.cpp/examples' \
  --exclude='llama.cpp/tests' -czf "$BUNDLE/llama.cpp-src.tar.gz" llama.cpp
rm -rf "$BUNDLE/patches" && mkdir -p "$BUNDLE/patches"
cp patches/llama.cpp/*.patch "$BUNDLE/patches/"
# The patches must apply to the pristine tree exactly as run.sh applies them.
check=$(mktemp -d)
tar -xzf "$BUNDLE/llama.cpp-src.tar.gz" -C "$check"
for p in "$BUNDLE"/patches/*.patch; do
  (cd "$check/llama.cpp" && patch -p1 --forward --batch --quiet < "$p") || { echo "patch $p does not apply" >&2; exit 1; }
done
rm -rf "$check"
cp "$VENDOR/llama.cpp/models/ggml-vocab-llama-spm.gguf" "$BUNDLE/"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
bins=(--bin tightwad --bin lan-relay)
[ -n "${PREPARE_BENCH_SUITE:-}" ] && bins+=(--bin bench-suite)
cargo build --release -p tightwad -p tightwad-benchmarks "${bins[@]}"
cp "$TARGET_DIR/release/tightwad" "$TARGET_DIR/release/lan-relay" "$BUNDLE/"
# A baseline build for the `-base` rows (PREPARE_BASE=<commit>): the same proxy at another commit,
# measured in the same run. Built in its own worktree and target directory.
rm -f "$BUNDLE/tightwad-base" "$BUNDLE/BASE_COMMIT"
if [ -n "${PREPARE_BASE:-}" ]; then
  base=$(git rev-parse --verify "$PREPARE_BASE^{commit}")
  tree=$(mktemp -d)
  git worktree add --detach "$tree" "$base" > /dev/null
  (cd "$tree" && CARGO_TARGET_DIR="$TARGET_DIR/base" cargo build --release -p tightwad --bin tightwad) \
    || { git worktree remove --force "$tree"; echo "building the baseline $base failed" >&2; exit 1; }
  git worktree remove --force "$tree"
  cp "$TARGET_DIR/base/release/tightwad" "$BUNDLE/tightwad-base"
  echo "$base" > "$BUNDLE/BASE_COMMIT"
fi
# The device carries at most 64 MiB: symbols are not needed there.
strip "$BUNDLE"/tightwad* "$BUNDLE/lan-relay" 2>/dev/null || true
[ -n "${PREPARE_BENCH_SUITE:-}" ] && cp "$TARGET_DIR/release/bench-suite" "$BUNDLE/"
cp benchmarks/gpu/run.sh benchmarks/gpu/gen_gpu_models.py benchmarks/gpu/exactness.py benchmarks/gpu/verify_cost.py benchmarks/gpu/relay_rtt.py scripts/gen_models.py "$BUNDLE/"
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " (with local changes)" || true)
echo "$(git rev-parse HEAD)$dirty" > "$BUNDLE/COMMIT"
ls -la "$BUNDLE" "$BUNDLE/patches"
du -sh "$BUNDLE"
