#!/usr/bin/env python3
"""results/tin-moe/summarize.py: README.md of issue 13's experiment from the run folders run.sh wrote.

Per method: the reconstruction loss of the last epoch, k-NN and linear-probe top-1 and PSNR (eval/eval.json), and for
the MoE methods per expert layer the gate confidence and loads of the last log window (metrics.jsonl) and the routing
figures on the val set (routing/routing.json): NMI of image -> expert against the 200 labels, the share of classes with
a majority expert, the share of classes the busiest expert is the top of.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = ["moce", "moce-nodistill", "tokenmoe", "dense"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def lines(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.strip()]
    except (OSError, ValueError):
        return []


def fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def main():
    out = ["# Issue 13 on Tiny-ImageNet-32: MoCE, TokenMoE and dense continued from one MAE", "",
           "Made by `results/tin-moe/run.sh` and `summarize.py`. Same init, data, epochs and steps for every run.", "",
           "| run | last epoch MAE loss | k-NN top-1 | linear probe top-1 | PSNR masked (dB) |",
           "|---|---|---|---|---|"]
    routing_rows = []
    for r in RUNS:
        d = os.path.join(HERE, r)
        metrics = lines(os.path.join(d, "metrics.jsonl"))
        epochs = [m for m in metrics if "train_loss" in m]
        last = epochs[-1].get("train_mae_loss", epochs[-1]["train_loss"]) if epochs else None
        ev = load(os.path.join(d, "eval", "eval.json")) or {}
        knn = (ev.get("knn") or {}).get("top1")
        probe = (ev.get("linear_probe") or {}).get("top1")
        psnr = (ev.get("reconstruction") or {}).get("psnr_masked_db")
        out.append(f"| {r} | {fmt(last)} | {fmt(knn, '.4f')} | {fmt(probe, '.4f')} | {fmt(psnr, '.2f')} |")
        steps = [m for m in metrics if "layers" in m]
        rt = load(os.path.join(d, "routing", "routing.json"))
        if steps or rt:
            layers = steps[-1]["layers"] if steps else []
            rl = {l["block"]: l for l in (rt or {}).get("layers", [])}
            for l in layers:
                x = rl.get(l["block"], {})
                routing_rows.append(
                    f"| {r} | {l['block']} | {fmt(l['gate_confidence'], '.3f')} | {fmt(max(l['load']), '.3f')} | "
                    f"{fmt(x.get('nmi'))} | {fmt(x.get('majority_class_share'), '.3f')} | "
                    f"{fmt(x.get('busiest_expert_class_share'), '.3f')} |")
    out += ["", "## Routing", "",
            "Gate confidence and the busiest expert's load: the last log window of training. NMI, majority and "
            "busiest-expert shares: `moce routing` on the 10,000 val images.", "",
            "| run | block | gate confidence | max load | NMI image->expert vs labels | classes with a majority expert | "
            "classes whose top is the busiest expert |", "|---|---|---|---|---|---|---|"] + routing_rows
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
