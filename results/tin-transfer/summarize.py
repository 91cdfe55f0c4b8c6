#!/usr/bin/env python3
"""results/tin-transfer/summarize.py: README.md from the */*/finetune.json files of run.sh (the transfer table)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETS = [("cifar10", "CIFAR-10"), ("fmnist", "Fashion-MNIST"), ("tin-A", "Tiny-ImageNet A-inanimate"),
        ("tin-B", "Tiny-ImageNet B-organism")]
MODELS = [("moce", "MoCE (exported sub-model)"), ("tokenmoe", "TokenMoE (whole)"), ("dense", "MAE* (dense, continued)")]


def load(path):
    with open(path) as fh:
        return json.load(fh)


def main():
    runs = {}
    for s, _ in SETS:
        for m, _ in MODELS:
            p = os.path.join(HERE, s, m, "finetune.json")
            if os.path.exists(p):
                runs[s, m] = load(p)
    if not runs:
        print("summarize.py: no finetune.json yet (run.sh makes them)", file=sys.stderr)
        return 1
    any_run = next(iter(runs.values()))
    proto = any_run["protocol"]
    out = ["# Transfer: MoCE's exported sub-model, TokenMoE and the dense MAE* fine-tuned on four sets", "",
           "Written by `summarize.py` from the `*/*/finetune.json` files of `run.sh` (commands there). The three models "
           "are the runs of `results/tin-moe` (one 30-epoch MAE on Tiny-ImageNet-32 continued 2 epochs each way); MoCE's "
           "experts for a set are those its cluster rule chose in `results/tin-search`.", "",
           f"Protocol (`moce finetune`): {len(proto['lrs'])} learning rates ({', '.join(str(x) for x in proto['lrs'])}) "
           f"tried with seed 0 on train minus val, then {proto['seeds']} seeds at the best, scored on the test images; "
           f"{proto['steps']} steps of {proto['batch']} images, SGD momentum {proto['momentum']}, cosine decay, "
           f"{proto['augmentation']}. Test top-1 mean ± standard deviation over the seeds (percent):", "",
           "| set | train / test images | " + " | ".join(n for _, n in MODELS) + " |",
           "|---|---|" + "---|" * len(MODELS)]
    for s, title in SETS:
        row = [r for (k, _), r in runs.items() if k == s]
        if not row:
            continue
        sizes = f"{row[0]['train_images']} / {row[0]['test_images']}"
        cells = []
        for m, _ in MODELS:
            r = runs.get((s, m))
            cells.append(f"{100 * r['test_top1_mean']:.1f} ± {100 * r['test_top1_std']:.1f} (lr {r['chosen_lr']:g})"
                         if r else "")
        out.append(f"| {title}, {row[0]['classes'] if isinstance(row[0]['classes'], int) else len(row[0]['classes'])} "
                   f"classes | {sizes} | " + " | ".join(cells) + " |")
    out.append("")
    out += ["Seconds per set and model (whole grid and seeds, 2-core CPU): " + "; ".join(
        f"{s} {m} {r['seconds']:.0f} s" for (s, m), r in sorted(runs.items())) + ".", ""]
    findings = os.path.join(HERE, "FINDINGS.md")
    if os.path.exists(findings):
        out += [open(findings).read().rstrip(), ""]
    tmp = os.path.join(HERE, "README.md.tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(out))
    os.replace(tmp, os.path.join(HERE, "README.md"))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
