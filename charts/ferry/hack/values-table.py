#!/usr/bin/env python3
"""Writes the values table of charts/ferry/README.md from values.yaml.

A value is documented by the `# -- text` comment lines right above it (more
`#` lines continue the text). The table goes between the README's
`<!-- values:start -->` and `<!-- values:end -->` markers.

    values-table.py            rewrite README.md
    values-table.py --check    exit 1 when README.md is stale
"""
import pathlib
import re
import sys

here = pathlib.Path(__file__).resolve().parent.parent
values = (here / "values.yaml").read_text().splitlines()
readme_path = here / "README.md"

rows, stack, doc = [], [], None
for line in values:
    stripped = line.strip()
    if stripped.startswith("# --"):
        doc = stripped[4:].strip()
        continue
    if stripped.startswith("#"):
        if doc is not None:
            doc += " " + stripped.lstrip("#").strip()
        continue
    m = re.match(r"^(\s*)([A-Za-z0-9_]+):\s*(.*)$", line)
    if not m:
        doc = None
        continue
    indent, key, default = len(m.group(1)), m.group(2), m.group(3).strip()
    while stack and stack[-1][0] >= indent:
        stack.pop()
    path = ".".join([k for _, k in stack] + [key])
    if doc is not None:
        shown = default if default else "(see values.yaml)"
        rows.append(f"| `{path}` | `{shown}` | {doc} |")
    if not default:
        stack.append((indent, key))
    doc = None

table = "| value | default | description |\n|---|---|---|\n" + "\n".join(rows) + "\n"
readme = readme_path.read_text()
new = re.sub(r"(<!-- values:start -->\n).*?(<!-- values:end -->)", lambda m: m.group(1) + table + m.group(2), readme, flags=re.S)
if "--check" in sys.argv:
    if new != readme:
        print("charts/ferry/README.md is stale: run `make chart-docs`", file=sys.stderr)
        sys.exit(1)
else:
    readme_path.write_text(new)
