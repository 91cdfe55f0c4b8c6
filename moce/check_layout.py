#!/usr/bin/env python3
# check_layout.py: checks the rules of moce/'s rooms (moce/README.md) on the includes of every file under moce/:
# no include of engine/backends/, no ENGINE_WITH_CUDA, each room includes only the rooms it may, and no include
# cycle among moce's own files. Prints each breach and exits 1; prints a one-line summary and exits 0 when clean.
#   python3 moce/check_layout.py            (from the repository root)
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Which rooms each room may include (itself always). Rooms that later issues bring are listed so the rule is written
# down before their first file.
ALLOWED = {
    "common": set(),
    "eval": {"common"},
    "train": {"common"},
    "cluster": {"common"},
    "experts": {"common"},
    "search": {"common", "eval", "experts"},
    "export": {"common", "experts"},
    "cmd": {"common", "eval", "train", "cluster", "experts", "search", "export"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def main():
    errors, graph = [], {}
    for dirpath, _, names in os.walk(os.path.join(ROOT, "moce")):
        for name in sorted(names):
            if not name.endswith((".h", ".cpp")):
                continue
            path = os.path.relpath(os.path.join(dirpath, name), ROOT)
            parts = path.split(os.sep)
            room = parts[1] if len(parts) > 2 else None
            if room not in ALLOWED:
                errors.append(f"{path}: not in a room of moce/ (one of {', '.join(sorted(ALLOWED))})")
                continue
            graph[path] = []
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if "ENGINE_WITH_CUDA" in line:
                        errors.append(f"{path}:{n}: tests ENGINE_WITH_CUDA (use engine/stream.h or engine/backend.h)")
                    m = INCLUDE.match(line)
                    if not m:
                        continue
                    inc = m.group(1)
                    if inc.startswith("engine/backends/"):
                        errors.append(f"{path}:{n}: includes {inc}, a backend's header")
                    if inc.startswith("moce/"):
                        target = inc.split("/")
                        other = target[1] if len(target) > 2 else None
                        if other != room and other not in ALLOWED[room]:
                            errors.append(f"{path}:{n}: the room {room}/ may not include {inc}")
                        graph[path].append(inc)
    # Include cycles among moce's files: depth-first search with colours.
    state = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                errors.append("include cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt in graph and state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"moce/ layout: {len(graph)} files, {sum(len(v) for v in graph.values())} moce includes; rooms, backends and "
          "cycles clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
