#!/usr/bin/env bash
# run_bench_gpu.sh: what `make bench-gpu` runs on a machine with a GPU. First bench_gpu (GEMM against cuBLASLt's
# best, memory-bound kernels against a device-to-device copy), then the issue's training workload, MAE ViT-B/16 at
# 224, batch 256, bf16 mixed precision: bench_train_step --device cuda and its PyTorch peer (bench/peer_train_step.py
# under torch.autocast, when a torch with CUDA imports) in alternating rounds, and the medians as ratio lines; then
# one more run of ours with the engine's own attention kernels (ENG_ATTENTION=own) in place of cuDNN's.
# Usage: bash bench/run_bench_gpu.sh [build-dir]. Environment: BENCH_ROUNDS (3), BENCH_GPU_CONFIG
# (mae_vit_base_patch16), BENCH_GPU_BATCH (256), BENCH_GPU_PRECISION (bf16; or f32, tf32).
set -euo pipefail
build=${1:-build}
rounds=${BENCH_ROUNDS:-3}
config=${BENCH_GPU_CONFIG:-mae_vit_base_patch16}
batch=${BENCH_GPU_BATCH:-256}
precision=${BENCH_GPU_PRECISION:-bf16}
here=$(dirname "$0")
case "$config" in
  mae_vit_base_patch16) peer_config=vit_base ;;
  mae_tiny_p4_32) peer_config=tiny ;;
  *) peer_config="" ;;
esac

"$build/bench/bench_gpu" | tee "$build/bench-gpu.out"
if grep -q "skipped" "$build/bench-gpu.out"; then exit 0; fi

py=""
for cand in python3 /usr/bin/python3; do
  if "$cand" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then py=$cand; break; fi
done
[ -z "$py" ] && echo "no PyTorch with CUDA importable: no peer figures"
[ -z "$peer_config" ] && { echo "no PyTorch peer for config $config"; py=""; }

rm -f "$build"/bench-gpu-train-*.out "$build"/bench-gpu-peer-*.out
for r in $(seq 1 "$rounds"); do
  echo "== round $r/$rounds: ours ($config, batch $batch, $precision)"
  "$build/bench/bench_train_step" --device cuda --precision "$precision" --config "$config" --batch "$batch" \
    --steps 10 --warmup 3 2>/dev/null | tee "$build/bench-gpu-train-$r.out"
  if [ -n "$py" ]; then
    echo "== round $r/$rounds: PyTorch peer ($py)"
    "$py" "$here/peer_train_step.py" --device cuda --precision "$precision" --config "$peer_config" --batch "$batch" \
      --steps 10 --warmup 3 | tee "$build/bench-gpu-peer-$r.out"
  fi
done

median() {
  local key=$1 field=$2; shift 2
  awk -v k="$key" -v f="$field" '$0 ~ "^"k {print $f}' "$@" | sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "nan"}'
}
ours=("$build"/bench-gpu-train-*.out)
step=$(median "train_step:" 2 "${ours[@]}")
fwd=$(median "forward:" 2 "${ours[@]}")
mfu=$(median "mfu:" 2 "${ours[@]}")
mem=$(median "gpu_peak_mib:" 2 "${ours[@]}")
echo "== summary: medians of $rounds rounds on $(grep -m1 '^bench_gpu on' "$build/bench-gpu.out" | sed 's/^bench_gpu on //')"
if [ -n "$py" ]; then
  peer=("$build"/bench-gpu-peer-*.out)
  pstep=$(median "peer_train_step:" 2 "${peer[@]}")
  pfwd=$(median "peer_forward:" 2 "${peer[@]}")
  pmem=$(median "gpu_peak_mib:" 2 "${peer[@]}")
  awk -v a="$step" -v b="$pstep" -v c="$config" -v n="$batch" -v p="$precision" \
    'BEGIN{printf "train_step (%s, batch %d, %s): %.1f images/s (%.2fx PyTorch %.1f)\n", c, n, p, a, a/b, b}'
  awk -v a="$fwd" -v b="$pfwd" 'BEGIN{printf "forward features (no grad): %.1f images/s (%.2fx PyTorch %.1f)\n", a, a/b, b}'
  awk -v a="$mem" -v b="$pmem" 'BEGIN{printf "GPU memory of the training step: %.0f MiB (%.2fx PyTorch %.0f MiB)\n", a, a/b, b}'
else
  echo "train_step ($config, batch $batch, $precision): $step images/s"
  echo "forward features (no grad): $fwd images/s"
  echo "GPU memory of the training step: $mem MiB"
fi
echo "model FLOPs utilisation: $mfu of the $precision dense peak (bench_train_step's mfu line)"
grep -m1 "^attention calls:" "${ours[0]}" || true

# The same step with the engine's own attention kernels instead of cuDNN's (ENG_ATTENTION=own), once, to show what
# cuDNN's fused attention is worth inside the step.
if [ "$precision" = bf16 ]; then
  echo "== once more with ENG_ATTENTION=own"
  ENG_ATTENTION=own "$build/bench/bench_train_step" --device cuda --precision "$precision" --config "$config" \
    --batch "$batch" --steps 10 --warmup 3 2>/dev/null | tee "$build/bench-gpu-train-own-attention.out" | grep -E "^(train_step|mfu|attention calls):" || true
fi
