#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored via .git/info/exclude) on the CPU machine, for benchmarks/gpu/run.sh on
# the GPU machine: the pinned llama.cpp tree stripped to what a CUDA build needs (~11 MB), a
# vocabulary file for the model generator, and release builds of `tightwad`, `lan-relay` and `bench-suite`.
# Then, with the device tool: run `bash benchmarks/gpu/run.sh build` and, within its warm window,
# `bash benchmarks/gpu/run.sh bench`, both with carry [".gpu"]; summarize the returned files with
# benchmarks/gpu/summarize.py RAW_DIR benchmarks/results/gpu.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
eval "$(scripts/setup)"

CACHE="${TIGHTWAD_CACHE:-$HOME/.cache/tightwad}"
VENDOR=$(ls -d "$CACHE"/src/llama-cpp-python-*/vendor | head -1)
mkdir -p .gpu
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
tar -C "$VENDOR" --exclude='llama.cpp/build*' --exclude='llama.cpp/docs' --exclude='llama.cpp/media' \
  --exclude='llama.cpp/benches' --exclude='llama.cpp/models/*.gguf' --exclude='llama.cpp/models/*.inp' \
  --exclude='llama.cpp/models/*.out' --exclude='llama.cpp/.git*' --exclude='llama.cpp/examples' \
  --exclude='llama.cpp/tests' -czf .gpu/llama.cpp-src.tar.gz llama.cpp
cp "$VENDOR/llama.cpp/models/ggml-vocab-llama-spm.gguf" .gpu/
cargo build --release -p tightwad -p tightwad-benchmarks --bin tightwad --bin lan-relay --bin bench-suite
cp target/release/tightwad target/release/lan-relay target/release/bench-suite .gpu/
du -sh .gpu

