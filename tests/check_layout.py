#!/usr/bin/env python3
# check_layout.py: checks the project's include rules (README.md, "Layout"; moce/README.md) on every source file and
# exits 1 naming each breach; `make test` runs it first. The rules:
#   - arrows run one way: engine/ includes nothing of data/, model/ or moce/; data/ only engine/; model/ only engine/
#     and data/; moce/ anything below it; tests/, bench/ and fuzz/ anything;
#   - only engine/ (and the tests and benchmarks that check a backend) include engine/backends/*; engine/optim.cpp
#     includes no backend header (it computes through the Backend interface);
#   - in moce/, each room includes only the rooms it may (ALLOWED; cluster/ and experts/ never include each other),
#     and no file tests ENGINE_WITH_CUDA (engine/stream.h and engine/backend.h are the device-neutral seams);
#   - no include cycle anywhere.
#   python3 tests/check_layout.py            (from the repository root)
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Top-level folders each folder may include (itself always).
LAYERS = {
    "engine": set(),
    "data": {"engine"},
    "model": {"engine", "data"},
    "moce": {"engine", "data", "model"},
    "tests": {"engine", "data", "model", "moce", "tests"},
    "bench": {"engine", "data", "model", "moce", "bench"},
    "fuzz": {"engine", "data", "model", "moce", "fuzz"},
}
# Which rooms of moce/ each room may include (itself always). Rooms that later issues bring are listed so the rule is
# written down before their first file.
ROOMS = {
    "common": set(),
    "eval": {"common"},
    "train": {"common", "eval", "cluster", "experts"},
    "cluster": {"common"},
    "experts": {"common"},
    "search": {"common", "eval", "experts", "cluster", "train", "finetune"},
    "export": {"common", "experts", "train", "search", "finetune"},
    "finetune": {"common", "eval", "train", "experts"},
    "cmd": {"common", "eval", "train", "cluster", "experts", "search", "export", "finetune"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
SOURCE = (".h", ".cpp", ".cu", ".cuh", ".inc")


def main():
    errors, graph = [], {}
    for top in sorted(LAYERS):
        for dirpath, dirnames, names in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = sorted(d for d in dirnames if d not in ("build", "corpus", "emu"))
            for name in sorted(names):
                if name.endswith(SOURCE):
                    check_file(os.path.relpath(os.path.join(dirpath, name), ROOT), errors, graph)
    # Include cycles: depth-first search with colours.
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                errors.append("include cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"layout: {len(graph)} files, {sum(len(v) for v in graph.values())} project includes; arrows, rooms, "
          "backends and cycles clean")
    return 0


def check_file(path, errors, graph):
    parts = path.split(os.sep)
    top = parts[0]
    room = parts[1] if top == "moce" and len(parts) > 2 else None
    if top == "moce" and room not in ROOMS:
        errors.append(f"{path}: not in a room of moce/ (one of {', '.join(sorted(ROOMS))})")
    graph[path] = []
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if top == "moce" and "ENGINE_WITH_CUDA" in line:
                errors.append(f"{path}:{n}: tests ENGINE_WITH_CUDA (use engine/stream.h or engine/backend.h)")
            m = INCLUDE.match(line)
            if not m:
                continue
            inc = m.group(1)
            target = inc.split("/")
            if target[0] not in LAYERS:
                continue  # a system or third-party header in quotes
            if target[0] != top and target[0] not in LAYERS[top]:
                errors.append(f"{path}:{n}: {top}/ may not include {inc} (arrows run data -> model -> moce, on engine)")
            if inc.startswith("engine/backends/") and top in ("data", "model", "moce"):
                errors.append(f"{path}:{n}: includes {inc}, a backend's header (only engine/ knows backends)")
            if path == os.path.join("engine", "optim.cpp") and inc.startswith("engine/backends/"):
                errors.append(f"{path}:{n}: includes {inc}; the optimizer computes through the Backend interface")
            if top == "moce" and room in ROOMS and target[0] == "moce":
                other = target[1] if len(target) > 2 else None
                if other != room and other not in ROOMS[room]:
                    errors.append(f"{path}:{n}: the room {room}/ may not include {inc}")
            resolved = inc if os.path.exists(os.path.join(ROOT, inc)) else None
            if resolved:
                graph[path].append(resolved)


if __name__ == "__main__":
    sys.exit(main())
