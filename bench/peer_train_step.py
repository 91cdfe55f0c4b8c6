#!/usr/bin/env python3
"""PyTorch peer of bench/bench_train_step.cpp: the same MAE step (mae_tiny_p4_32: 32x32 images, patch 4,
encoder 192 x 12 with 3 heads, decoder 128 x 4 with 4 heads, mask ratio 0.75, norm_pix_loss), batch 128, AdamW
(0.9, 0.95), timed as forward + backward + optimizer step; and forward-only features (all patches, no grad).
Used only for comparison; the engine never needs Python. Run: python3 bench/peer_train_step.py [--batch 128]
Prints lines `peer_train_step: X images/s` and `peer_forward: X images/s` for make bench to read.
"""
import argparse
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
from make_mae_fixture import MAE  # noqa: E402  (the PyTorch restatement of MAE used for the golden fixture)

TINY = dict(img_size=32, patch_size=4, in_chans=3, embed_dim=192, depth=12, num_heads=3,
            decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4, mlp_ratio=4.0, norm_pix_loss=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.manual_seed(0)
    model = MAE(TINY)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4, betas=(0.9, 0.95),
                            weight_decay=0.05)
    imgs = torch.randn(a.batch, 3, 32, 32)
    L = 64
    times = []
    for s in range(a.warmup + a.steps):
        noise = torch.rand(a.batch, L)
        t0 = time.perf_counter()
        loss, _, _ = model(imgs, noise, 0.75)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if s >= a.warmup:
            times.append(dt)
    step = statistics.median(times)
    fwd = []
    with torch.no_grad():
        for s in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            x = model.patch_embed(imgs) + model.pos_embed[:, 1:, :]
            cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(a.batch, -1, -1)
            x = torch.cat((cls, x), dim=1)
            for b in model.blocks:
                x = b(x)
            f = model.norm(x)[:, 1:, :].mean(dim=1)
            dt = time.perf_counter() - t0
            if s >= a.warmup:
                fwd.append(dt)
    fw = statistics.median(fwd)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch}")
    print(f"train step: {step:.3f} s; forward features: {fw:.3f} s; peak RSS {rss:.0f} MiB")
    print(f"peer_train_step: {a.batch / step:.1f} images/s")
    print(f"peer_forward: {a.batch / fw:.1f} images/s")


if __name__ == "__main__":
    main()
