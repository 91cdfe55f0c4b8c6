#!/usr/bin/env bash
# run_bench.sh: what `make bench` runs. Every benchmark binary in <build>/bench (the GEMM benchmark beside
# OpenBLAS, ...), then the MAE training-step benchmark and its PyTorch peer (bench/peer_train_step.py, when torch
# imports) in alternating rounds, so both see the same machine state, and finally the medians over the rounds as
# ratio lines. Usage: bash bench/run_bench.sh [build-dir]. Environment: BENCH_ROUNDS (3), BENCH_THREADS (our
# OpenMP threads; default all CPUs this process may use), BENCH_PEER_THREADS (torch.set_num_threads for the peer;
# default PyTorch's own setting, its fastest on the reference machine, see peer_train_step.py).
set -euo pipefail
build=${1:-build}
rounds=${BENCH_ROUNDS:-3}
threads=${BENCH_THREADS:-$(nproc)}
here=$(dirname "$0")

echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average" \
  "$(cut -d' ' -f1-3 /proc/loadavg) before the benchmarks"
for b in "$build"/bench/*; do
  [ -x "$b" ] || continue
  [ "$(basename "$b")" = bench_train_step ] && continue
  [ "$(basename "$b")" = bench_cluster ] && continue
  echo "== $b"
  "$b" | tee "$build/bench-$(basename "$b").out"
done
# The clustering benchmark's full size (1.28M x 768, 10 epochs) takes minutes: make bench runs its --quick mode.
if [ -x "$build/bench/bench_cluster" ]; then
  echo "== $build/bench/bench_cluster --quick"
  "$build/bench/bench_cluster" --quick | tee "$build/bench-bench_cluster.out"
fi

py=""
for cand in python3 /usr/bin/python3; do
  if "$cand" -c 'import torch' >/dev/null 2>&1; then py=$cand; break; fi
done
[ -z "$py" ] && echo "PyTorch not importable: no peer figures (apt-get install python3-torch gives one)"

rm -f "$build"/bench-train-*.out "$build"/bench-peer-*.out
for r in $(seq 1 "$rounds"); do
  echo "== round $r/$rounds: ours ($threads threads)"
  OMP_NUM_THREADS=$threads "$build/bench/bench_train_step" 2>/dev/null | tee "$build/bench-train-$r.out"
  if [ -n "$py" ]; then
    echo "== round $r/$rounds: PyTorch peer ($py)"
    "$py" "$here/peer_train_step.py" --threads "${BENCH_PEER_THREADS:-0}" | tee "$build/bench-peer-$r.out"
  fi
done

# median of field $2 of the lines starting with $1 over the round files $3...
median() {
  local key=$1 field=$2; shift 2
  awk -v k="$key" -v f="$field" '$0 ~ "^"k {print $f}' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "nan"}'
}
ours=("$build"/bench-train-*.out)
ours_step=$(median "train_step:" 2 "${ours[@]}")
ours_fwd=$(median "forward:" 2 "${ours[@]}")
ours_peak=$(median "peak memory of the training step:" 7 "${ours[@]}")
ours_rss=$(median "peak memory of the training step:" 17 "${ours[@]}")
echo "== summary: medians of $rounds rounds, $threads threads, load average now $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$py" ]; then
  peer=("$build"/bench-peer-*.out)
  peer_step=$(median "peer_train_step:" 2 "${peer[@]}")
  peer_fwd=$(median "peer_forward:" 2 "${peer[@]}")
  peer_rss=$(median "peak memory of the training step:" 13 "${peer[@]}")
  awk -v a="$ours_step" -v b="$peer_step" -v t="$threads" \
    'BEGIN{printf "train_step (mae_tiny_p4_32, batch 128, %d CPUs): %.1f images/s (%.2fx PyTorch %.1f)\n", t, a, a/b, b}'
  awk -v a="$ours_fwd" -v b="$peer_fwd" -v t="$threads" \
    'BEGIN{printf "forward features (no grad, %d CPUs): %.1f images/s (%.2fx PyTorch %.1f)\n", t, a, a/b, b}'
  awk -v p="$ours_peak" -v a="$ours_rss" -v b="$peer_rss" \
    'BEGIN{printf "peak memory of the training step: %.0f MiB RSS growth (allocator peak %.0f MiB) (%.2fx PyTorch %.0f MiB RSS growth)\n", a, p, a/b, b}'
else
  echo "train_step (mae_tiny_p4_32, batch 128, $threads threads): $ours_step images/s"
  echo "forward features (no grad, $threads threads): $ours_fwd images/s"
  echo "peak memory of the training step: $ours_rss MiB RSS growth (allocator peak $ours_peak MiB)"
fi
# The expert-layer GEMM (grouped_matmul's kernel, E = 8) against the plain GEMM of the same total shape, from
# bench_gemm's run above.
[ -f "$build/bench-bench_gemm.out" ] && grep '^grouped_gemm' "$build/bench-bench_gemm.out" || true
