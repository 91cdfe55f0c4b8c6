#!/usr/bin/env bash
# results/tin-cluster/run.sh: MoCE stage one on Tiny-ImageNet-32 (issue 12's experiment). One feature bank of the 50,000
# training images from an MAE checkpoint, then the paper's Sinkhorn clustering and the plain k-means peer (Lloyd) on
# that same bank, each at M = 256 and M = 64, scored against the 200 labels and the 2 semantic groups of splits.tsv;
# summarize.py then writes the table of results/tin-cluster/README.md.
#
#   results/tin-cluster/run.sh [CHECKPOINT]        (from the repository root; default results/tin-mae30/weights.safetensors)
#
# Environment: LIMIT=N clusters only the first N images (a quick check of the script; 0 = all), DATA (the data set's
# folder, holding train/ and splits.tsv), MOCE (the binary), EPOCHS (Sinkhorn epochs, the paper's 10), BATCH (images
# per Sinkhorn step, 4096: 13 steps per epoch on 50,000 images, where the paper's 1.28M gave 313), SEED (0; another
# seed writes <algorithm>-M<m>-seed<S>/, which summarize.py reads as the spread over seeds),
# FORCE=1 (redo runs that are already finished; otherwise they are skipped). Each run writes
# results/tin-cluster/<algorithm>-M<m>/; only clusters.json and cluster_samples.png go into git (.gitignore there).
set -euo pipefail

CHECKPOINT=${1:-results/tin-mae30/weights.safetensors}
DATA=${DATA:-../shared/data/tiny-imagenet-32}
MOCE=${MOCE:-build/bin/moce}
LIMIT=${LIMIT:-0}
EPOCHS=${EPOCHS:-10}
BATCH=${BATCH:-4096}
SEED=${SEED:-0}
OUT=results/tin-cluster
GROUPS_TSV=$DATA/splits.tsv

[ -f "$CHECKPOINT" ] || { echo "run.sh: checkpoint $CHECKPOINT not found (argument 1)" >&2; exit 2; }
[ -d "$DATA/train" ] || { echo "run.sh: $DATA/train not found (set DATA)" >&2; exit 2; }
[ -f "$GROUPS_TSV" ] || { echo "run.sh: $GROUPS_TSV not found" >&2; exit 2; }
[ -x "$MOCE" ] || { echo "run.sh: $MOCE not built (make build/bin/moce)" >&2; exit 2; }

# The bank is extracted once, by the first run, and every other run reads it from there.
BANK=$OUT/sinkhorn-M256/bank.safetensors
common=(--checkpoint "$CHECKPOINT" --data "$DATA/train" --limit "$LIMIT" --groups "$GROUPS_TSV" --groups-column split
        --seed "$SEED" --init kmeans++)
# Sinkhorn: the paper's epsilon, iterations, tau, momentum and weight decay, but --lr 0.01 and k-means++ seeding:
# moce/cluster/README.md ("The paper's SGD values") found that with rows renormalised every step the paper's lr 0.1
# with weight decay 0.9 is an effective step of ~1 and does not converge (loss rises, planted NMI 0.73), and that at
# feature dimension 192..768 random unit centroids are nearly orthogonal to every feature and barely move; lr 0.01 from
# k-means++ recovers planted clusters exactly (NMI 1.0) and learns on the synthetic ImageNet-sized bank.
sinkhorn=(--algorithm sinkhorn --epochs "$EPOCHS" --batch "$BATCH" --lr 0.01)
kmeans=(--algorithm kmeans --kmeans-iters 50)

run() {  # run NAME M FLAGS...
  local name=$1 m=$2
  shift 2
  local dir=$OUT/$name-M$m
  [ "$SEED" = 0 ] || dir=$dir-seed$SEED  # seed 0 is the main run; other seeds give the spread
  if [ -f "$dir/clusters.json" ] && [ "${FORCE:-0}" != 1 ]; then
    echo "== $dir: finished before, skipped (FORCE=1 redoes it)"
    return
  fi
  local bank=()
  if [ -f "$BANK" ]; then bank=(--bank "$BANK"); fi
  echo "== $dir"
  "$MOCE" cluster "${common[@]}" "${bank[@]}" --clusters "$m" "$@" --force --out "$dir"
}

run sinkhorn 256 "${sinkhorn[@]}"
run kmeans 256 "${kmeans[@]}"
run sinkhorn 64 "${sinkhorn[@]}"
run kmeans 64 "${kmeans[@]}"
python3 "$OUT/summarize.py"
