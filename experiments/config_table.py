"""Generates the README's table of configs from the configs' module docstrings.

  python -m experiments.config_table          # rewrite the table in README.md
  python -m experiments.config_table --check  # exit 1 if README.md is not current

Each config's docstring has a one-line summary, then `Command:`, `Runtime:` and `Expected:`
lines. Docstrings are read with `ast`, so nothing is imported.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"
README = ROOT / "README.md"
START, END = "<!-- configs:start -->", "<!-- configs:end -->"
FIELDS = ("Command", "Runtime", "Expected")


def config_docs() -> list[dict[str, str]]:
    rows = []
    for path in sorted(CONFIGS.glob("*.py")):
        if path.stem.startswith("_") or path.stem == "common":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines = [line.strip() for line in doc.splitlines()]
        row = {"name": path.stem, "summary": lines[0] if lines else ""}
        for field in FIELDS:
            value = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(field)), "")
            if not value:
                raise ValueError(f"{path} docstring lacks a '{field}:' line.")
            row[field.lower()] = value
        rows.append(row)
    return rows


def render() -> str:
    out = [
        START,
        "| config | what it trains | expected result | runtime |",
        "|---|---|---|---|",
    ]
    for row in config_docs():
        out.append(f"| `{row['name']}` | {row['summary']} | {row['expected']} | {row['runtime']} |")
    out.append(END)
    return "\n".join(out)


def updated_readme(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the {START} ... {END} markers.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + render() + tail


def main(argv: list[str]) -> int:
    text = README.read_text()
    new = updated_readme(text)
    if "--check" in argv:
        if new != text:
            print("README.md's config table is out of date; run python -m experiments.config_table")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
