#!/usr/bin/env python3
"""scripts/method_table.py RUN_DIR: the table of scripts/moce_method.sh (markdown, to stdout) from its JSON files.

One row per task: the chosen cluster and its share of the task's images, the chosen experts, the test top-1 of the
chosen path, of the dense MAE* (the MAE continued for the same steps) and of the worst path (exhaustive search), each
fine-tuned the same way, and the search's cost. Above it, the MAE's reconstruction against flat patches.
"""
import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def top1_and_loss(ft):
    """Test top-1 and, since nearly equal models often tie in top-1, the test cross-entropy (mean over seeds)."""
    losses = [t.get("eval_loss") for t in ft.get("tests", []) if t.get("eval_loss") is not None]
    loss = f" ({sum(losses) / len(losses):.3f})" if losses else ""
    return pct(ft.get("test_top1_mean")) + loss


def main():
    if len(sys.argv) != 2:
        print("usage: method_table.py RUN_DIR", file=sys.stderr)
        return 2
    run = sys.argv[1]
    out = []
    ev = load(os.path.join(run, "mae", "eval", "eval.json")) or {}
    rec = ev.get("reconstruction") or {}
    if rec:
        psnr, flat = rec.get("psnr_masked_db"), rec.get("psnr_masked_zero_prediction_db")
        verdict = "beats" if psnr is not None and flat is not None and psnr > flat else "does NOT beat"
        out.append(f"MAE: PSNR of the removed patches {psnr:.2f} dB; flat patches at their true mean {flat:.2f} dB "
                   f"(the MAE {verdict} it); k-NN {pct((ev.get('knn') or {}).get('top1'))}, linear probe "
                   f"{pct((ev.get('linear_probe') or {}).get('top1'))}")
        out.append("")
    out.append("| task | classes | chosen cluster (share) | chosen experts | chosen | dense MAE* | worst experts | worst "
               "| best by exhaustive | search: MoCE rule / exhaustive (CPU-s) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    out_note = ("Test top-1 of each fine-tuned model, its test cross-entropy in brackets; search cost in CPU-seconds.")
    tasks_dir = os.path.join(run, "tasks")
    for task in sorted(os.listdir(tasks_dir)) if os.path.isdir(tasks_dir) else []:
        d = os.path.join(tasks_dir, task)
        s = load(os.path.join(d, "search.json")) or {}
        ex = (s.get("methods") or {}).get("exhaustive") or {}
        moce_rule = (s.get("methods") or {}).get("moce") or {}
        ft = {k: load(os.path.join(d, f"finetune-{k}", "finetune.json")) or {} for k in ("chosen", "dense", "worst")}
        classes = ", ".join(ft["chosen"].get("classes", []))
        experts = ",".join(map(str, s.get("experts", [])))
        worst = ",".join(map(str, ex.get("worst_experts", [])))
        best = ",".join(map(str, ex.get("experts", [])))
        share = s.get("cluster_share")
        out.append(f"| {task} | {classes} | {s.get('cluster', '-')} ({pct(share)}) | {experts} | "
                   f"{top1_and_loss(ft['chosen'])} | {top1_and_loss(ft['dense'])} | {worst} | "
                   f"{top1_and_loss(ft['worst'])} | {best} | "
                   f"{moce_rule.get('cpu_seconds', 0):.1f} / {ex.get('cpu_seconds', 0):.1f} |")
    out += ["", out_note]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
