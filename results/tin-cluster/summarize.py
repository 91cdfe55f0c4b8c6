#!/usr/bin/env python3
# results/tin-cluster/summarize.py: writes results/tin-cluster/README.md from the clusters.json of every run folder
# run.sh made (<algorithm>-M<m>/): one table row per run and assignment (the balanced Sinkhorn one and its plain
# argmax; k-means has one assignment, Lloyd's), with the sizes, empty clusters, size entropy, and purity and NMI against
# the 200 labels and against the semantic groups. With no run folder yet it writes the README that says the run is
# pending.   python3 results/tin-cluster/summarize.py   (from anywhere)
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

INTRO = """# results/tin-cluster/

MoCE stage one (issue 12) on Tiny-ImageNet-32: one feature bank of the 50,000 training images (`tiny-imagenet-32/train`,
200 classes) from an MAE checkpoint, clustered by the paper's balanced Sinkhorn optimisation (`--algorithm sinkhorn`:
learned centroids, then the balanced assignment and its plain argmax) and by plain Euclidean k-means, Lloyd's algorithm
(`--algorithm kmeans`, the peer), at M = 256 and M = 64, both from k-means++ seeds. Each is scored against the 200
labels and against the two semantic groups of `tiny-imagenet-32/splits.tsv` (column `split`: A-inanimate, 140
classes; B-organism, 60 classes): purity and NMI (arithmetic normalisation). Sinkhorn runs with `--lr 0.01` (not the
paper's 0.1; see `run.sh` and `moce/cluster/README.md`, "The paper's SGD values").

Made by `results/tin-cluster/run.sh [CHECKPOINT]` (default `results/tin-mae30/weights.safetensors`), which ends with
`python3 results/tin-cluster/summarize.py` (this file's writer). Each `<algorithm>-M<m>/` keeps `clusters.json` and
`cluster_samples.png` in git; the bank, centroids and assignments are remade by the script (`.gitignore`).
"""

PENDING = """
**The run is pending**: the MAE checkpoint it needs (`results/tin-mae30`, 30 epochs of `mae_tiny_p4_32` on these
50,000 images) is still being trained. The script was checked end to end on a stand-in checkpoint (1 epoch on 2,000
images, `LIMIT=2000`), whose results are not kept.
"""


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def rows_of(run_dir):
    with open(os.path.join(run_dir, "clusters.json")) as f:
        j = json.load(f)
    algo = j.get("algorithm", "sinkhorn")
    picks = [("Lloyd", "balanced")] if algo == "kmeans" else [("balanced", "balanced"), ("argmax", "plain_argmax")]
    rows = []
    for label, key in picks:
        s = j[key]
        g = s.get("groups", {})
        rows.append([algo, str(j["clusters"]), label, f"{s['min']} / {s['median']:g} / {s['max']}", str(s["num_empty"]),
                     fmt(s["size_entropy_normalised"]), fmt(s.get("purity")), fmt(s.get("nmi")), fmt(g.get("purity")),
                     fmt(g.get("nmi"))])
    if algo == "kmeans":
        k = j["kmeans"]
        its = k["iterations"]
        note = (f"k-means M = {j['clusters']}: {len(its)} Lloyd iterations ({'converged' if k['converged'] else 'not converged'}"
                f", last inertia {its[-1]['inertia']:.2f}, {k['reseeded_total']} empty clusters re-seeded), "
                f"{sum(i['seconds'] for i in its):.1f} s")
    else:
        ep = j.get("epochs", [])
        fs = j.get("final_sinkhorn", {})
        note = (f"Sinkhorn M = {j['clusters']}: {len(ep)} epochs, loss {ep[0]['mean_loss']:.4f} -> {ep[-1]['mean_loss']:.4f}"
                f" (log M = {__import__('math').log(j['clusters']):.4f}), final Sinkhorn {fs.get('iterations')} iterations "
                f"({'converged' if fs.get('converged') else 'not converged'}), {sum(e['seconds'] for e in ep):.1f} s of epochs"
                if ep else f"Sinkhorn M = {j['clusters']}")
    return j, rows, note


def main():
    dirs = sorted(d for d in glob.glob(os.path.join(HERE, "*-M*")) if os.path.isfile(os.path.join(d, "clusters.json")))

    def order(d):
        m = re.match(r"(.*)-M(\d+)$", os.path.basename(d))
        return (-int(m.group(2)), m.group(1)) if m else (0, d)

    dirs.sort(key=order)
    text = INTRO
    if not dirs:
        text += PENDING
    else:
        first = None
        table, notes = [], []
        for d in dirs:
            j, rows, note = rows_of(d)
            first = first or j
            table += rows
            notes.append(f"- `{os.path.basename(d)}/`: {note}")
        groups = first.get("groups", {})
        text += (f"\nRun on {first['images']} images of dimension {first['dim']}, features of `{first['checkpoint']}` "
                 f"(pool {first['pool']}, input limit {first['inputs'].get('limit')}); groups: "
                 f"{', '.join(f'{n} ({c})' for n, c in zip(groups.get('names', []), groups.get('images_per_group', [])))}"
                 " images.\n\n")
        head = ["algorithm", "M", "assignment", "sizes min / median / max", "empty", "size entropy / log M",
                "purity (labels)", "NMI (labels)", "purity (groups)", "NMI (groups)"]
        text += "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
        text += "".join("| " + " | ".join(r) + " |\n" for r in table)
        text += "\n" + "\n".join(notes) + "\n"
    path = os.path.join(HERE, "README.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a reader never sees half a README
    print(f"summarize.py: {path} ({len(dirs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
