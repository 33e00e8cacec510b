"""The benchmarks' charts, drawn with matplotlib (the `bench` extra; without it the benchmarks
print their tables and say that they drew nothing).

size_chart: GB/s against tensor size on a log axis, a line per provider, the measured copy
ceiling dashed, device and commit in the title.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

Series = Mapping[str, Sequence[tuple[float, float]]]  # label -> (elements, GB/s) points


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def size_label(n: float) -> str:
    """4096 -> "4K", 16777216 -> "16M"."""
    n = int(n)
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K" if n >= 1 << 10 else str(n)


def size_chart(series: Series, ceiling: Sequence[tuple[float, float]], path: Path | str, *, title: str,
               subtitle: str, x_label: str = "elements", y_label: str = "GB/s (the contract's bytes)") -> None:
    """Writes a PNG to `path`: each series as a line with markers over log2-spaced sizes, the
    copy ceiling as a dashed black line (the roof a one-read-one-write kernel can reach)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4, label=label)
    if ceiling:
        points = sorted(ceiling)
        ax.plot([p[0] for p in points], [p[1] for p in points], "k--", linewidth=1.2, label="copy ceiling")
    ax.set_xscale("log", base=2)
    sizes = sorted({p[0] for points in [*series.values(), ceiling] for p in points})
    ax.set_xticks(sizes, [size_label(n) for n in sizes])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"{title}\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
