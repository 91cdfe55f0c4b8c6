#!/usr/bin/env python3
"""light_checkpoint.py: a copy of a moce checkpoint without its optimizer state (the "optim.*" tensors and the
"optimizer" metadata), a third of the size: what carries a long pre-training run from one machine to the next in git
(results/ keeps files under 30 MB). `moce pretrain --resume DIR` on a folder whose checkpoint-last.safetensors is such
a copy continues the schedule at the saved epoch with AdamW's moments started again (it says so, and writes a note
line into metrics.jsonl): no longer bit for bit an uninterrupted run, which the run's README must state.

    python3 results/tin-mae30/light_checkpoint.py runs/tin-mae30/checkpoint-last.safetensors results/tin-mae30/checkpoint-light.safetensors

Pure Python (the safetensors layout: an 8-byte little-endian header size, a JSON header, the data), written to a
temporary file and renamed.
"""
import json
import os
import struct
import sys


def main(src, dst):
    with open(src, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        meta = header.pop("__metadata__", {})
        if meta.get("format") is None:
            sys.exit(f"{src}: no format in the metadata (not a moce checkpoint)")
        keep = sorted((k for k in header if not k.startswith("optim.")), key=lambda k: header[k]["data_offsets"][0])
        out_header, pieces, offset = {}, [], 0
        for k in keep:
            a, b = header[k]["data_offsets"]
            f.seek(base + a)
            data = f.read(b - a)
            out_header[k] = {"dtype": header[k]["dtype"], "shape": header[k]["shape"],
                             "data_offsets": [offset, offset + len(data)]}
            pieces.append(data)
            offset += len(data)
    meta = dict(meta)
    meta["optimizer"] = "{}"
    out_header["__metadata__"] = meta
    blob = json.dumps(out_header, separators=(",", ":")).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)  # the data starts 8-byte aligned
    tmp = dst + ".tmp"
    with open(tmp, "wb") as g:
        g.write(struct.pack("<Q", len(blob)))
        g.write(blob)
        for p in pieces:
            g.write(p)
        g.flush()
        os.fsync(g.fileno())
    os.replace(tmp, dst)
    print(f"{dst}: {len(keep)} tensors, {os.path.getsize(dst) / 2**20:.1f} MiB (dropped {len(header) - len(keep)} optimizer tensors)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
