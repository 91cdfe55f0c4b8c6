#!/usr/bin/env bash
# run_bench.sh: runs every benchmark binary, then the PyTorch peer of the training step when torch imports,
# and prints the ratios (ours / PyTorch) measured in this same invocation.
set -euo pipefail
build=${1:-build}
for b in "$build"/bench/*; do
  [ -x "$b" ] || continue
  echo "== $b"
  "$b" | tee "$build/bench-$(basename "$b").out"
done
py=""
for cand in python3 /usr/bin/python3; do
  if "$cand" -c 'import torch' >/dev/null 2>&1; then py=$cand; break; fi
done
if [ -z "$py" ]; then
  echo "PyTorch not importable: no peer figures (apt-get install python3-torch gives one)"
  exit 0
fi
echo "== PyTorch peer ($py)"
"$py" "$(dirname "$0")/peer_train_step.py" | tee "$build/bench-peer.out"
ours_step=$(awk '/^train_step:/{print $2}' "$build/bench-bench_train_step.out")
ours_fwd=$(awk '/^forward:/{print $2}' "$build/bench-bench_train_step.out")
peer_step=$(awk '/^peer_train_step:/{print $2}' "$build/bench-peer.out")
peer_fwd=$(awk '/^peer_forward:/{print $2}' "$build/bench-peer.out")
awk -v a="$ours_step" -v b="$peer_step" 'BEGIN{printf "train_step (mae_tiny_p4_32, batch 128): %.1f images/s (%.2fx PyTorch %.1f)\n", a, a/b, b}'
awk -v a="$ours_fwd" -v b="$peer_fwd" 'BEGIN{printf "forward features (no grad): %.1f images/s (%.2fx PyTorch %.1f)\n", a, a/b, b}'
