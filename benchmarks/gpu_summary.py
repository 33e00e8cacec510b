"""The summary of a GPU check (benchmarks/gpu_check.sh), as Markdown on stdout, from what the
stages left in its output folder: stages.tsv, environment.txt, pytest.xml and bench.json.
Standard library only: it must write a summary even where the build or torch is broken.

    python benchmarks/gpu_summary.py --out DIR > DIR/summary.md
"""

from __future__ import annotations

import argparse
import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path

SIZE_UNITS = ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K"))


def stages(out: Path) -> list[str]:
    path = out / "stages.tsv"
    if not path.exists():
        return ["(no stages recorded)"]
    rows = list(csv.reader(path.open(), delimiter="\t"))
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return lines + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def tests(out: Path) -> list[str]:
    """Counts, and every failing or erroring test with the first line of its message."""
    path = out / "pytest.xml"
    if not path.exists():
        return ["No junit file: the tests did not run, or were killed before pytest could write it "
                "(pytest.log says how far they got)."]
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    lines = [f"{passed} passed, {counts['failures']} failed, {counts['errors']} errors, "
             f"{counts['skipped']} skipped, in {float(suite.get('time', 0)):.0f} s", ""]
    for case in suite.iter("testcase"):
        for kind in ("failure", "error"):
            found = case.find(kind)
            if found is not None:
                message = (found.get("message") or found.text or "").strip().splitlines()
                lines.append(f"- {kind.upper()} `{case.get('classname')}::{case.get('name')}`: "
                             f"{message[0][:300] if message else ''}")
    return lines


def size_label(n: int) -> str:
    return next((f"{n // unit}{name}" for unit, name in SIZE_UNITS if n >= unit and n % unit == 0), str(n))


def headline(out: Path) -> list[str]:
    """Per size, dtype and mode: each provider's GB/s and % of the copy ceiling, and how many
    times lsq_fast's time torch's learnable op takes."""
    path = out / "bench.json"
    if not path.exists():
        return ["No bench.json: the benchmark did not finish (bench.log says why)."]
    data = json.loads(path.read_text())
    rows = [r for r in data["results"] if r["ms"] is not None]
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p != "lsq_fast", p))
    table = {}
    for r in rows:
        table.setdefault((r["dtype"], r["mode"], r["numel"]), {})[r["provider"]] = r
    head = ["dtype", "mode", "size"] + [f"{p} GB/s (% copy)" for p in providers] + ["torch_learnable / lsq_fast"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dtype, mode, numel), cells in sorted(table.items()):
        cols = [f"{c['gbps']:.0f} ({c['pct_of_copy']:.0f}%)" if (c := cells.get(p)) and c["gbps"] else "" for p in providers]
        peer = cells.get("torch_learnable")
        ratio = f"{peer['speedup']:.2f}x" if peer and peer.get("speedup") else ""
        lines.append("| " + " | ".join([dtype, mode, size_label(numel), *cols, ratio]) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    out = p.parse_args().out
    env = out / "environment.txt"
    parts = ["# GPU check", "", "```", env.read_text().strip() if env.exists() else "(no environment.txt)", "```", "",
             "## Stages", "", *stages(out), "", "## GPU tests (pytest -m gpu)", "", *tests(out), "",
             "## Headline benchmark (bench.md has every column)", "", *headline(out), ""]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
