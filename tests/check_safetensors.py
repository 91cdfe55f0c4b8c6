#!/usr/bin/env python3
"""check_safetensors.py: the Python side of the safetensors interop test (tests/test_safetensors.cpp).

  python3 tests/check_safetensors.py verify FILE   checks a file the C++ writer made, with the `safetensors` package
  python3 tests/check_safetensors.py write FILE    writes the same tensors with the `safetensors` package

Both sides know the reference tensors by heart; keep reference() in step with reference_tensors() in the C++ test.
Comparisons are bitwise (NaN, -0 and denormals included); the C++ writer's "checksums" metadata entry is checked
against Python's zlib.crc32 of each tensor's bytes. numpy has no bfloat16, so BF16 is handled as raw uint16.
Needs: numpy, safetensors. Exit status 0 when everything matches.
"""
import json
import sys
import zlib

import numpy as np
from safetensors import TensorSpec, deserialize, safe_open, serialize_file

METADATA = {"note": "h\u00e9llo \"quoted\"\nline2", "empty": "", "format": "test"}
BF16_BITS = np.array([0x3F80, 0xC020, 0x3E20, 0x4380, 0x8000], dtype=np.uint16)  # 1, -2.5, 0.15625, 256, -0


def reference():
    inf, nan = float("inf"), float("nan")
    f32 = np.array([0.0, -0.0, 1.5, -2.25, 2.0**-140, np.finfo(np.float32).max, inf, -inf, nan, 0.1, 1e-3, -7.0],
                   dtype=np.float32).reshape(3, 4)
    p53 = 2**53 + 1
    return {
        "f32": f32,
        "f32_t": np.ascontiguousarray(f32.T),
        "f64": np.array([0.1, -1e300, 5e-324, 3.141592653589793, -0.0, -inf], dtype=np.float64).reshape(2, 3),
        "i32": np.array([-2**31, -1, 0, 2**31 - 1], dtype=np.int32),
        "i64": np.array([-2**63, -p53, p53, 2**63 - 1], dtype=np.int64).reshape(2, 2),
        "scalar": np.array(42.5, dtype=np.float32),
        "empty": np.zeros((2, 0), dtype=np.float32),
        "nested.name.weight": np.arange(1, 7, dtype=np.float64).reshape(1, 2, 3),
    }


def fail(msg):
    print("check_safetensors:", msg)
    sys.exit(1)


def verify(path):
    want = reference()
    with safe_open(path, framework="np") as f:
        keys = set(f.keys())
        if keys != set(want) | {"bf16"}:
            fail(f"tensor names {sorted(keys)} != expected {sorted(set(want) | {'bf16'})}")
        metadata = dict(f.metadata())
        checksums = json.loads(metadata.pop("checksums", "null"))  # the C++ writer's CRC-32 of each tensor
        if metadata != METADATA:
            fail(f"metadata {metadata!r} != {METADATA!r}")
        for name, w in want.items():
            got = f.get_tensor(name)
            if got.dtype != w.dtype or got.shape != w.shape or got.tobytes() != w.tobytes():
                fail(f"{name}: got {got.dtype} {got.shape} {got!r}, want {w.dtype} {w.shape} {w!r}")
    with open(path, "rb") as fh:
        raw = dict(deserialize(fh.read()))
    if checksums is None or set(checksums) != set(raw):
        fail(f"checksums {checksums!r} do not list exactly the tensors {sorted(raw)}")
    for name, t in raw.items():
        if checksums[name] != f"{zlib.crc32(bytes(t['data'])):08x}":
            fail(f"{name}: stored checksum {checksums[name]} != zlib.crc32 {zlib.crc32(bytes(t['data'])):08x}")
    b = raw["bf16"]
    if b["dtype"] != "BF16" or list(b["shape"]) != [5] or bytes(b["data"]) != BF16_BITS.tobytes():
        fail(f"bf16: got {b['dtype']} {b['shape']} {bytes(b['data']).hex()}")
    as_f32 = (np.frombuffer(bytes(b["data"]), dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if as_f32.tolist() != [1.0, -2.5, 0.15625, 256.0, -0.0]:
        fail(f"bf16 values {as_f32.tolist()}")
    print(f"check_safetensors: {path}: {len(raw)} tensors and metadata match")


def write(path):
    arrays = reference()
    specs = {name: TensorSpec(dtype=a.dtype.name, shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes)
             for name, a in arrays.items()}
    specs["bf16"] = TensorSpec(dtype="bfloat16", shape=BF16_BITS.shape, data_ptr=BF16_BITS.ctypes.data,
                               data_len=BF16_BITS.nbytes)
    serialize_file(specs, path, metadata=METADATA)  # `arrays` keeps the memory alive meanwhile
    print(f"check_safetensors: wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("verify", "write"):
        fail("usage: check_safetensors.py verify|write FILE")
    verify(sys.argv[2]) if sys.argv[1] == "verify" else write(sys.argv[2])
