#!/usr/bin/env python3
"""PyTorch peer of bench/bench_train_step.cpp: the same MAE step (mae_tiny_p4_32: 32x32 images, patch 4,
encoder 192 x 12 with 3 heads, decoder 128 x 4 with 4 heads, mask ratio 0.75, norm_pix_loss), batch 128, AdamW
(0.9, 0.95), timed as forward + backward + optimizer step; and forward-only features (all patches, no grad).
The model is tests/fixtures/make_mae_fixture.py's restatement of facebookresearch/mae (the golden fixture's
generator), so both sides compute the same thing.

Threads: PyTorch's own defaults unless --threads is given. On the reference machine (Debian's python3-torch 1.13,
2 CPUs) that is 1 intra-op thread, while the GEMMs go to OpenBLAS with its own 2 pthreads: both cores busy, and
measured faster than torch.set_num_threads(2) (whose OpenMP threads then compete with OpenBLAS's), so the
default is the peer's best configuration on these cores. The threads of both pools are printed.
AdamW: --foreach 1 uses the multi-tensor implementation when this torch has it (the faster one on CPU);
the default is PyTorch's own default for CPU tensors.
On a GPU (make bench-gpu): --device cuda --precision bf16 --config vit_base --batch 256 is MAE ViT-B/16 at 224
(encoder 768 x 12, 12 heads; decoder 512 x 8, 16 heads) under torch.autocast(bfloat16) with f32 master weights,
the issue's peer; attention goes through F.scaled_dot_product_attention (flash / memory-efficient kernels) where
this torch has it, PyTorch's fastest eager path (--sdpa 0 keeps the explicit softmax(QK^T)V of the fixture).
--precision tf32 sets torch.backends.cuda.matmul.allow_tf32. Each timed GPU step ends with
torch.cuda.synchronize(); peak memory is torch.cuda.max_memory_allocated.
Used only for comparison; the engine never needs Python. Run: python3 bench/peer_train_step.py [--batch 128]
Prints lines `peer_train_step: X images/s` and `peer_forward: X images/s` for make bench to read.
"""
import argparse
import contextlib
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
VIT_BASE = dict(img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0, norm_pix_loss=True)
CONFIGS = {"tiny": TINY, "vit_base": VIT_BASE}


def use_sdpa(model):
    """Swaps every attention's explicit softmax(QK^T)V for F.scaled_dot_product_attention (same math)."""
    import torch.nn.functional as F

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)

    for b in list(model.blocks) + list(model.decoder_blocks):
        b.attn.forward = forward.__get__(b.attn)


def blas_threads():
    """Threads of the OpenBLAS that torch loaded (it runs its own pthreads beside torch's), or '?'."""
    import ctypes
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "openblas" in line and line.split()[-1].startswith("/")})
    for path in libs:
        try:
            return ctypes.CDLL(path).openblas_get_num_threads()
        except (OSError, AttributeError):
            continue
    return "?"


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps PyTorch's default")
    ap.add_argument("--foreach", type=int, default=-1, help="1/0: force AdamW's foreach implementation on/off")
    ap.add_argument("--only", choices=["train", "forward"], default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--precision", choices=["f32", "tf32", "bf16"], default="f32", help="tf32 and bf16: cuda only")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--sdpa", type=int, default=1, help="on cuda: attention through F.scaled_dot_product_attention")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if a.precision != "f32" and not cuda:
        sys.exit(f"peer_train_step: --precision {a.precision} needs --device cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = a.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = a.precision == "tf32"
    cfg = CONFIGS[a.config]
    sdpa = cuda and a.sdpa and hasattr(torch.nn.functional, "scaled_dot_product_attention")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if a.precision == "bf16" else None

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = MAE(cfg).to(dev)
    if sdpa:
        use_sdpa(model)
    params = [p for p in model.parameters() if p.requires_grad]
    kw = {} if a.foreach < 0 else {"foreach": bool(a.foreach)}
    opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05, **kw)
    size = cfg["img_size"]
    imgs = torch.randn(a.batch, 3, size, size, device=dev)
    L = (size // cfg["patch_size"]) ** 2
    if cuda:
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name(dev)}, config {a.config}, batch {a.batch}, "
              f"precision {a.precision}, attention {'sdpa' if sdpa else 'explicit'}, AdamW foreach "
              f"{kw.get('foreach', 'default')}; medians of {a.steps} steps after {a.warmup} warm-up")
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, BLAS threads {blas_threads()}, "
              f"{len(os.sched_getaffinity(0))} CPUs, batch {a.batch}, AdamW foreach {kw.get('foreach', 'default')}; "
              f"medians of {a.steps} steps after {a.warmup} warm-up")
    rss0 = rss_mib()
    step = fw = None
    if a.only in (None, "train"):
        wall, cpu = [], []
        for s in range(a.warmup + a.steps):
            noise = torch.rand(a.batch, L, device=dev)
            sync()
            if cuda and s == a.warmup:
                torch.cuda.reset_peak_memory_stats(dev)
            c0, t0 = time.process_time(), time.perf_counter()
            if autocast:
                with autocast():
                    loss, _, _ = model(imgs, noise, 0.75)
            else:
                loss, _, _ = model(imgs, noise, 0.75)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if s >= a.warmup:
                wall.append(dt)
                cpu.append(dc)
        step = statistics.median(wall)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        print(f"train step: {step:.3f} s wall (cpu {statistics.median(cpu):.3f} s), {a.batch / step:.1f} images/s")
        print(f"peak memory of the training step: peak RSS growth over the steps {peak - rss0:.0f} MiB")
        if cuda:
            print(f"gpu_peak_mib: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f}")
    if a.only in (None, "forward"):
        wall, cpu = [], []
        with torch.no_grad():
            for s in range(a.warmup + a.steps):
                sync()
                c0, t0 = time.process_time(), time.perf_counter()
                with (autocast() if autocast else contextlib.nullcontext()):
                    x = model.patch_embed(imgs) + model.pos_embed[:, 1:, :]
                    cls = (model.cls_token + model.pos_embed[:, :1, :]).expand(a.batch, -1, -1)
                    x = torch.cat((cls, x), dim=1)
                    for b in model.blocks:
                        x = b(x)
                    f = model.norm(x)[:, 1:, :].mean(dim=1)
                sync()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if s >= a.warmup:
                    wall.append(dt)
                    cpu.append(dc)
        fw = statistics.median(wall)
        print(f"forward features: {fw:.3f} s wall (cpu {statistics.median(cpu):.3f} s), {a.batch / fw:.1f} images/s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"peak RSS of the process: {rss:.0f} MiB")
    if step is not None:
        print(f"peer_train_step: {a.batch / step:.1f} images/s")
    if fw is not None:
        print(f"peer_forward: {a.batch / fw:.1f} images/s")


if __name__ == "__main__":
    main()
