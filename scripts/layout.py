#!/usr/bin/env python3
"""Checks that README's layout table matches src/: every source file is named in the row of
its directory (or has a row of its own), and every file the table names exists.

A directory's `mod.rs` and unit-test files (`*_tests.rs`) need no mention.
Prints each mismatch and exits 1 if there is any.
Usage: scripts/layout.py
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def table_rows(readme):
    """(path, text) of each row of the table that starts with `| path | what lives there |`."""
    lines = readme.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("| path | what lives there |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = line.split("|")
        rows.append((cells[1].strip(), cells[2]))
    return rows


def main():
    rows = table_rows(open(os.path.join(ROOT, "README.md")).read())
    problems = []
    # Each row's paths: `src/x/` for a directory, `src/x.rs` for a file; a cell may name two.
    dirs, files = {}, set()
    for path, text in rows:
        for p in re.findall(r"`([^`]+)`", path):
            if p.endswith("/"):
                dirs[p.rstrip("/")] = text
            else:
                files.add(p)
            if not os.path.exists(os.path.join(ROOT, p)):
                problems.append(f"README names {p}, which does not exist")
    for d, text in dirs.items():
        for name in re.findall(r"`([\w./-]+\.rs)`", text):
            if not os.path.exists(os.path.join(ROOT, d, name)):
                problems.append(f"README names {d}/{name}, which does not exist")
    for root, _, names in os.walk(os.path.join(ROOT, "src")):
        for name in sorted(names):
            if not name.endswith(".rs") or name.endswith("_tests.rs"):
                continue
            rel = os.path.relpath(os.path.join(root, name), ROOT)
            d = os.path.dirname(rel)
            if rel in files or (name == "mod.rs" and d in dirs):
                continue
            if d in dirs and f"`{name}`" in dirs[d]:
                continue
            # A module's own directory (`shard/http.rs`), named in its parent's row.
            parent, sub = os.path.split(d)
            if parent in dirs and f"`{sub}/{name}`" in dirs[parent]:
                continue
            problems.append(f"{rel} is not in README's layout table")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("layout: README's table names every source file, and only those")


if __name__ == "__main__":
    main()
