"""Tables and files the benchmarks write: one way to lay out a table, on the console and in Markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

Line = Sequence[str]


def console_table(header: Line, lines: Sequence[Line], text_columns: set[int]) -> str:
    """Columns padded to their widest cell: text columns left-aligned, numbers right-aligned,
    a rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    rows = [header, tuple("-" * w for w in widths), *lines]
    return "\n".join(
        "  ".join(c.ljust(w) if j in text_columns else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    )


def markdown_table(header: Line, lines: Sequence[Line]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(line) + " |" for line in lines)]


def write(path: str | Path, text: str) -> None:
    Path(path).write_text(text)
    print(f"wrote {path}")


def write_json(path: str | Path, environment: dict, args: argparse.Namespace, **fields) -> None:
    """Results as JSON: where they were measured, the arguments (less the output paths), and fields."""
    arguments = {k: v for k, v in vars(args).items() if k not in ("json", "markdown")}
    write(path, json.dumps({"environment": environment, "args": arguments, **fields}, indent=2) + "\n")
