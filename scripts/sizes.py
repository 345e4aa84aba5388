#!/usr/bin/env python3
"""Checks the size limits that keep src/ readable: main.rs under 150 lines, no function over
120 lines, no file over 1,500 lines except unit-test files (`*_tests.rs`, `tests/`).

Size is a symptom, not the rule: a function that outgrows the limit usually does two things.
Prints every breach and exits 1 if there is any.
Usage: scripts/sizes.py
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAIN_LINES = 150
FN_LINES = 120
FILE_LINES = 1500


def strip(text):
    """The code with comments and string/char literals blanked, line breaks kept."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.match(r'r(#*)"', text[i : i + 10])
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        m = re.match(r"'(\\.[^']*|[^\\'])'", text[i : i + 12])
        if c == "'" and m:
            out.append("' '")
            i += len(m.group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(text):
    """(name, first line, line count) of every fn with a body, nested ones included."""
    code = strip(text)
    found = []
    for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", code):
        depth, i = 0, m.end()
        # The body opens at the first `{` outside the signature's parentheses; a `;` first
        # means a declaration without a body.
        while i < len(code) and code[i] not in "{;":
            i += 1
        if i >= len(code) or code[i] == ";":
            continue
        start = i
        while i < len(code):
            if code[i] == "{":
                depth += 1
            elif code[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        first = code.count("\n", 0, m.start()) + 1
        last = code.count("\n", 0, i) + 1
        found.append((m.group(1), first, last - first + 1))
    return found


def main():
    problems = []
    for root, _, names in os.walk(SRC):
        for name in sorted(names):
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, os.path.join(SRC, ".."))
            text = open(path).read()
            lines = text.count("\n")
            if rel == os.path.join("src", "main.rs") and lines >= MAIN_LINES:
                problems.append(f"{rel}: {lines} lines (main.rs must stay under {MAIN_LINES})")
            if lines > FILE_LINES and not name.endswith("_tests.rs"):
                problems.append(f"{rel}: {lines} lines (over {FILE_LINES})")
            for fn, first, count in functions(text):
                if count > FN_LINES:
                    problems.append(f"{rel}:{first}: fn {fn} is {count} lines (over {FN_LINES})")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("sizes: main.rs, every function and every file within limits")


if __name__ == "__main__":
    main()
