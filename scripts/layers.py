#!/usr/bin/env python3
"""Checks that src/ imports only downward and has no import circles.

The layers, bottom first: protocol (the wire, pure) -> link (per-link state, pure) -> core
(the shard and its glommio shell) -> control (the tokio side) -> cluster (fleet lifecycle) ->
main. A file may use its own layer and those below. The leaves (the generated proto code,
metrics, auth and the crate root's helpers) may be used by any layer and use no layer;
config is read by main alone. Within a layer, files must not use each other in a circle.

Prints every upward import and every circle, and exits 1 if there is any.
Usage: scripts/layers.py [--graph]   (--graph prints each file's imports too)
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
LAYERS = ["protocol", "link", "core", "control", "cluster"]
LEAVES = {"proto", "backend_proto", "metrics", "auth", ""}
# fuzzing drives every layer for the fuzz targets, as main does.
TOP = {"main", "bin", "fuzzing"}


def module_files():
    """Module path (tuple) -> file, for every .rs file under src/."""
    files = {}
    for root, _, names in os.walk(SRC):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib"):
                rel = rel[:-1]
            files[tuple(rel)] = path
    return files


def strip(text):
    """The code without comments and string literals, which may mention paths."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def use_paths(tree, prefix=()):
    """Expands a `use` tree (`a::{b, c::d}`) into its paths."""
    tree = tree.strip()
    depth, parts, cur = 0, [], ""
    # Split off the leading segments up to a brace group.
    m = re.match(r"^((?:[A-Za-z_][A-Za-z0-9_]*::)*)\{(.*)\}$", tree, re.S)
    if m:
        head = tuple(s for s in m.group(1).split("::") if s)
        for ch in m.group(2):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        out = []
        for p in parts:
            if p.strip():
                out += use_paths(p, prefix + head)
        return out
    tree = re.sub(r"\s+as\s+\w+$", "", tree)
    return [prefix + tuple(s for s in tree.split("::") if s)]


def imports(path, module, files):
    """The module files `path` refers to through `crate::` and `super::` paths. A file's unit
    tests (its trailing `#[cfg(test)] mod`) are left out: their `super` is the file itself."""
    text = strip(open(path).read())
    tests = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if tests:
        text = text[: tests.start()]
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths += use_paths(m.group(1))
    for m in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
        paths.append(tuple(m.group(1).split("::")))
    targets = set()
    for p in paths:
        if not p:
            continue
        if p[0] == "crate":
            base, rest = (), p[1:]
        elif p[0] == "super":
            base, rest = module, p
            while rest and rest[0] == "super":
                base, rest = base[:-1], rest[1:]
        elif p[0] == "self":
            base, rest = module, p[1:]
        else:
            continue
        full = base + rest
        # The deepest module file the path names.
        for n in range(len(full), -1, -1):
            if full[:n] in files:
                targets.add(full[:n])
                break
    targets.discard(module)
    return targets


def layer(module):
    head = module[0] if module else ""
    if head in TOP:
        return len(LAYERS)
    if head == "config":
        return None
    if head in LEAVES or head not in LAYERS:
        return -1
    return LAYERS.index(head)


def name(module):
    return "/".join(module) or "lib"


def circles(graph):
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    files = module_files()
    graph = {m: imports(p, m, files) for m, p in files.items()}
    bad = []
    for m, targets in sorted(graph.items()):
        lm = layer(m)
        for t in sorted(targets):
            lt = layer(t)
            if lt is None and m[:1] not in (("main",), ("config",)):
                bad.append(f"{name(m)} reads {name(t)}: config is main's alone")
            elif lt is not None and lm is not None and lt > lm:
                bad.append(f"{name(m)} imports {name(t)}, a layer above it")
            elif lm == -1 and lt is not None and lt >= 0 and m != ():
                bad.append(f"{name(m)} is a leaf but imports {name(t)}")
        if "--graph" in sys.argv:
            print(f"{name(m)}: {', '.join(name(t) for t in sorted(targets))}")
    # The crate root declares every module; it is not an import.
    graph[()] = set()
    for comp in circles(graph):
        bad.append("circle: " + " -> ".join(name(m) for m in comp))
    for line in bad:
        print(line)
    if bad:
        print(f"{len(bad)} layering problems (layers, bottom first: {' -> '.join(LAYERS)})")
        sys.exit(1)
    print("layers: every import runs downward, no circles")


if __name__ == "__main__":
    main()
