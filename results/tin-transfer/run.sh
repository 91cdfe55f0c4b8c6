#!/usr/bin/env bash
# results/tin-transfer/run.sh: the transfer table (the paper's Table 3, at our scale). On each downstream set of
# results/tin-search, fine-tune with the paper's protocol (moce finetune: an lr grid on train minus val, then 3 seeds
# at the chosen lr, scored on the set's test images):
#   moce       the plain ViT exported from results/tin-moe/moce with the experts MoCE's rule chose for the set
#              (search.json's "experts")
#   tokenmoe   results/tin-moe/tokenmoe, fine-tuned whole (every expert and gate)
#   dense      results/tin-moe/dense: the dense MAE continued for the same steps (the paper's MAE*)
# summarize.py writes README.md.
#
#   results/tin-transfer/run.sh        (from the repository root; a run already done is skipped)
#
# Environment: MOCE (build/bin/moce), PER_CLASS (100 training images per class), STEPS (40), FT_BATCH (64),
# LRS (0.01,0.03,0.1), SEEDS (3), SETS (default: the four of results/tin-search), MODELS (moce tokenmoe dense).
set -euo pipefail

MOCE=${MOCE:-build/bin/moce}
PER_CLASS=${PER_CLASS:-100}
STEPS=${STEPS:-40}
FT_BATCH=${FT_BATCH:-64}
LRS=${LRS:-0.01,0.03,0.1}
SEEDS=${SEEDS:-3}
SETS=${SETS:-"cifar10 fmnist tin-A tin-B"}
MODELS=${MODELS:-"moce tokenmoe dense"}
OUT=results/tin-transfer
TIN=../shared/data/tiny-imagenet-32
MOE=results/tin-moe

[ -x "$MOCE" ] || { echo "run.sh: $MOCE not built (make build/bin/moce)" >&2; exit 2; }
for m in moce tokenmoe dense; do
  [ -f "$MOE/$m/weights.safetensors" ] || { echo "run.sh: $MOE/$m/weights.safetensors not found (EPOCHS=2 $MOE/run.sh makes it)" >&2; exit 2; }
done

# Every STEP-th wnid of a group, in wnid order (splits.tsv: wnid, name, split, family): as results/tin-search/run.sh.
group_classes() { awk -F'\t' -v g="$1" -v s="$2" 'NR > 1 && $3 == g { if (n++ % s == 0) printf "%s%s", (k++ ? "," : ""), $1 }' "$TIN/splits.tsv"; }

for set in $SETS; do
  # test: CIFAR-10's test batch (100 per class), Fashion-MNIST's t10k (first 1,000), Tiny-ImageNet's val (50 per class)
  case $set in
    cifar10) data=../shared/data/cifar10/train; test=../shared/data/cifar10/test; classes=""; testsel="--per-class-test 100" ;;
    fmnist)  data=fashion-mnist; test=fashion-mnist; classes=""; testsel="--limit-test 1000" ;;
    tin-A)   data=$TIN/train; test=$TIN/val; classes=$(group_classes A-inanimate 14); testsel="" ;;
    tin-B)   data=$TIN/train; test=$TIN/val; classes=$(group_classes B-organism 6); testsel="" ;;
    *) echo "run.sh: unknown set $set" >&2; exit 2 ;;
  esac
  search=results/tin-search/$set/search.json
  [ -f "$search" ] || { echo "run.sh: $search not found (results/tin-search/run.sh makes it)" >&2; exit 2; }
  for m in $MODELS; do
    dir=$OUT/$set/$m
    if [ -f "$dir/finetune.json" ]; then echo "== $dir: done"; continue; fi
    mkdir -p "$dir"
    model=$MOE/$m/weights.safetensors
    if [ "$m" = moce ]; then
      experts=$(python3 -c 'import json, sys; print(",".join(map(str, json.load(open(sys.argv[1]))["experts"])))' "$search")
      model=$dir/export.safetensors
      "$MOCE" export --model "$MOE/moce/weights.safetensors" --experts "$experts" --out "$model" 2>&1 | tee "$dir/export.log"
    fi
    echo "== $dir: $model on $data ${classes:+(classes $classes)}"
    "$MOCE" finetune --model "$model" --data "$data" --test-data "$test" ${classes:+--classes "$classes"} \
      --per-class "$PER_CLASS" $testsel --steps "$STEPS" --batch "$FT_BATCH" --lrs "$LRS" --seeds "$SEEDS" \
      --out "$dir" 2>&1 | tee "$dir/finetune.log"
    rm -f "$dir/export.safetensors"  # 22 MB each, remade from search.json in seconds
  done
done
python3 "$OUT/summarize.py"
