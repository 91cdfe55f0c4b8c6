#!/usr/bin/env bash
# run_bench.sh: what `make bench` runs. Every benchmark binary in <build>/bench (the GEMM benchmark beside
# OpenBLAS, ...), then the MAE training-step benchmark and its PyTorch peer (bench/peer_train_step.py, when torch
# imports) in alternating rounds, so both see the same machine state, and finally the medians over the rounds as
# ratio lines. Each round also runs the step as MoCE (with and without its distillation teacher) and as TokenMoE
# (bench_train_step --method, 8 experts in the last encoder blocks, see its header) in a rotating order; their ratios
# to the dense step are taken within each round (a pair of runs a few seconds apart) and summarised as the median and
# the range over the rounds, so a burst of other load moves both sides of a ratio alike. Usage: bash bench/run_bench.sh [build-dir]. Environment: BENCH_ROUNDS (3), BENCH_THREADS (our
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

rm -f "$build"/bench-train-*.out "$build"/bench-peer-*.out "$build"/bench-moe-*.out
# The expert variants: 5 timed steps after 2 warm-up (the dense step keeps its 7) to hold make bench to minutes.
variants=(dense moce moce-nodistill tokenmoe tokenmoe-nodrop)
run_variant() {  # run_variant <variant> <round>
  local v=$1 r=$2 out=$build/bench-moe-$1-$2.out args=(--method "$1" --steps 5 --warmup 2)
  case $v in
    dense) out=$build/bench-train-$r.out args=() ;;
    moce-nodistill) args=(--method moce --no-distill --only train --steps 5 --warmup 2) ;;
    # Capacity factor 8 = the number of experts: no token is dropped (an untrained token gate drops 35-50% at 1.05).
    tokenmoe-nodrop) args=(--method tokenmoe --capacity-factor 8 --only train --steps 5 --warmup 2) ;;
  esac
  echo "== round $r/$rounds: ours, $v ($threads threads)"
  OMP_NUM_THREADS=$threads "$build/bench/bench_train_step" "${args[@]}" 2>/dev/null | tee "$out"
}
for r in $(seq 1 "$rounds"); do
  # The order rotates each round, so no variant always runs first (or right after the peer).
  for i in 0 1 2 3 4; do run_variant "${variants[$(( (i + r) % 5 ))]}" "$r"; done
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

# The expert variants against the dense step: per-round ratios (runs of the same round), median and range over rounds.
# per_round <key> <field> <variant-a> <variant-b>: the ratio a/b of field $2 of the line starting with <key>, per round.
value_of() { awk -v k="$1" -v f="$2" '$0 ~ "^"k {print $f; exit}' "$3" 2>/dev/null; }
file_of() { [ "$1" = dense ] && echo "$build/bench-train-$2.out" || echo "$build/bench-moe-$1-$2.out"; }
ratio_summary() {  # ratio_summary <label> <key> <variant-a> <variant-b> [<key-b>]: median (min-max) of a/b over rounds
  local label=$1 key=$2 a=$3 b=$4 key_b=${5:-$2} r va vb
  for r in $(seq 1 "$rounds"); do
    va=$(value_of "$key" 2 "$(file_of "$a" "$r")"); vb=$(value_of "$key_b" 2 "$(file_of "$b" "$r")")
    [ -n "$va" ] && [ -n "$vb" ] && awk -v x="$va" -v y="$vb" 'BEGIN{printf "%.4f\n", x / y}'
  done | sort -g | awk -v l="$label" -v n="$rounds" '{v[NR]=$1} END {if (NR) printf "%s: %.3fx (median of %d rounds, range %.3f-%.3f)\n", l, v[int((NR+1)/2)], NR, v[1], v[NR]; else printf "%s: nan\n", l}'
}
echo "== expert layers (8 experts; MoCE in blocks 10, 11, TokenMoE in blocks 9, 11): medians of $rounds rounds"
for v in "${variants[@]}"; do
  files=(); for r in $(seq 1 "$rounds"); do files+=("$(file_of "$v" "$r")"); done
  echo "train_step_ms $v: $(median "train_step_ms:" 2 "${files[@]}") ms wall, $(median "train_step_cpu_ms:" 2 "${files[@]}") ms CPU per step of 128 images"
done
for v in dense moce tokenmoe; do
  files=(); for r in $(seq 1 "$rounds"); do files+=("$(file_of "$v" "$r")"); done
  echo "forward $v: $(median "forward:" 2 "${files[@]}") images/s$([ "$v" = moce ] && echo " (the sub-model: a dense ViT); routed whole MoCE model $(median "forward_routed:" 2 "${files[@]}") images/s")"
done
# Wall-time ratios, then the same on CPU time (the work done: what a share of the machine taken by other jobs moves least).
for clock in train_step_ms train_step_cpu_ms; do
  ratio_summary "moce_step/dense_step ($clock)" "$clock:" moce dense
  ratio_summary "moce_nodistill_step/dense_step ($clock)" "$clock:" moce-nodistill dense
  ratio_summary "moce_step/tokenmoe_step ($clock)" "$clock:" moce tokenmoe
  ratio_summary "moce_nodistill_step/tokenmoe_step ($clock)" "$clock:" moce-nodistill tokenmoe
  ratio_summary "moce_nodistill_step/tokenmoe_nodrop_step ($clock)" "$clock:" moce-nodistill tokenmoe-nodrop
done
ratio_summary "forward moce_submodel/tokenmoe_full (throughput)" "forward:" moce tokenmoe
ratio_summary "forward moce_routed/tokenmoe_full (throughput)" "forward_routed:" moce tokenmoe "forward:"
# One expert layer against the dense MLP (bench_moe_layer's run above: where the MoE layers' time goes).
[ -f "$build/bench-bench_moe_layer.out" ] && grep '^moe_layer' "$build/bench-bench_moe_layer.out" || true
