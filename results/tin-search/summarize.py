#!/usr/bin/env python3
"""results/tin-search/summarize.py: README.md's tables from the search.json files run.sh wrote.

Per set: each method's choice, the held-out top-1 that exhaustive search measured for that choice (every candidate
was fine-tuned the same way, so one table gives every choice its accuracy), its rank among the candidates, the
method's cost, and how its scores order the candidates against exhaustive's (Spearman's rho)."""
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETS = [("cifar10", "CIFAR-10, 10 classes"), ("fmnist", "Fashion-MNIST, 10 classes"),
        ("tin-A", "Tiny-ImageNet A-inanimate, 10 classes"), ("tin-B", "Tiny-ImageNet B-organism, 10 classes")]
METHODS = ["moce", "knn", "logme", "early-stop", "exhaustive"]
NAMES = {"moce": "MoCE's rule", "knn": "k-NN", "logme": "LogME", "early-stop": "early stop", "exhaustive": "exhaustive"}


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = [0.0] * len(values)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va > 0 and vb > 0 else float("nan")


def path(experts):
    return ",".join(str(e) for e in experts)


def main():
    out = ["# Expert search methods side by side (the paper's Table 5, at our scale)", "",
           "Written by `summarize.py` from the `*/search.json` files of `run.sh` (commands there). The MoCE model is",
           "`results/tin-moe/moce` (Tiny-ImageNet-32, mae_tiny_p4_32 with 8 experts in blocks 10 and 11, 256 balanced",
           "clusters, 2 epochs from the 30-epoch MAE). Its gates give the 256 clusters {} distinct expert paths: the",
           "candidates every method chooses from.", ""]
    summary = []
    n_candidates = None
    for key, title in SETS:
        f = os.path.join(HERE, key, "search.json")
        if not os.path.exists(f):
            out += [f"## {title}", "", f"not run yet (`SETS={key} results/tin-search/run.sh`)", ""]
            continue
        j = json.load(open(f))
        m = j["methods"]
        cands = j["candidates"]
        n_candidates = len(cands)
        ex = m["exhaustive"]
        acc = ex["scores"]
        order = sorted(range(len(acc)), key=lambda i: -acc[i])
        rank = {c: 1 + sum(1 for a in acc if a > acc[c]) for c in range(len(acc))}
        split = ex["split"]
        ft = ex["finetune"]
        p = sum(acc) / len(acc)
        se = math.sqrt(p * (1 - p) / split["val"])
        out += [f"## {title}", "",
                f"{j['images']} images ({split['train']} to fine-tune or fit on, {split['val']} held out to score); "
                f"every candidate fine-tuned {ft['steps']} steps at lr {ft['lr']} (exhaustive), "
                f"{m['early-stop']['finetune']['steps']} (early stop).", "",
                "| method | choice (experts of blocks 10, 11) | held-out top-1 of the choice (exhaustive's run) "
                "| rank | cost (CPU-s) | Spearman rho of its scores vs exhaustive's |",
                "|---|---|---|---|---|---|"]
        for meth in METHODS:
            if meth not in m:
                continue
            e = m[meth]
            c = e["choice"]
            rho = "" if meth in ("moce", "exhaustive") else f"{spearman(e['scores'], acc):+.2f}"
            if meth == "moce":
                rho = "(votes, one cluster's path)"
            out.append(f"| {NAMES[meth]} | {path(e['experts'])} | {100 * acc[c]:.1f}% | {rank[c]} "
                       f"| {e['cpu_seconds']:.0f} | {rho} |")
        w = ex["worst"]
        out += ["", f"Exhaustive: best {path(cands[order[0]]['experts'])} at {100 * acc[order[0]]:.1f}%, worst "
                f"{path(cands[w]['experts'])} at {100 * acc[w]:.1f}%; mean over the candidates {100 * p:.1f}%, "
                f"standard deviation {100 * stdev(acc):.1f} points; the sampling error of one top-1 on "
                f"{split['val']} images alone is about {100 * se:.1f} points.", ""]
        if "moce" in m and "votes" in j:
            pass
        summary.append((title, {meth: acc[m[meth]["choice"]] for meth in METHODS if meth in m},
                        {meth: m[meth]["cpu_seconds"] for meth in METHODS if meth in m}, acc[order[0]], acc[w]))
    if n_candidates is not None:
        out[4] = out[4].format(n_candidates)
    if summary:
        out += ["## All sets", "", "held-out top-1 of each method's choice / its cost in CPU-seconds:", "",
                "| set | " + " | ".join(NAMES[m] for m in METHODS) + " | best | worst |",
                "|---|" + "---|" * (len(METHODS) + 2)]
        for title, a, c, best, worst in summary:
            cells = [f"{100 * a[m]:.1f}% / {c[m]:.0f} s" if m in a else "" for m in METHODS]
            out.append(f"| {title} | " + " | ".join(cells) + f" | {100 * best:.1f}% | {100 * worst:.1f}% |")
        out.append("")
    findings = os.path.join(HERE, "FINDINGS.md")
    if os.path.exists(findings):
        out += [open(findings).read().rstrip(), ""]
    with open(os.path.join(HERE, "README.md.tmp"), "w") as fh:
        fh.write("\n".join(out))
    os.replace(os.path.join(HERE, "README.md.tmp"), os.path.join(HERE, "README.md"))
    print("\n".join(out))


def stdev(v):
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0


if __name__ == "__main__":
    sys.exit(main())
