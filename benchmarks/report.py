"""Tables and files the benchmarks write: one way to lay out a table, on the console and in Markdown."""

from __future__ import annotations

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
