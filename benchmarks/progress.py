"""A one-line progress bar on stderr while a benchmark runs (only on a terminal: logs stay clean)."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, stream=sys.stderr, width: int = 30):
        self.total, self.done, self.stream, self.width = max(total, 1), 0, stream, width
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self._last = 0

    def show(self, label: str) -> None:
        """Redraws the bar with `label` as what is running now."""
        if not self.live:
            return
        filled = self.width * self.done // self.total
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} {label}"
        self.stream.write("\r" + line.ljust(self._last))
        self.stream.flush()
        self._last = len(line)

    def advance(self, label: str = "") -> None:
        self.done += 1
        self.show(label)

    def clear(self) -> None:
        """Erases the bar, before something else prints."""
        if self.live and self._last:
            self.stream.write("\r" + " " * self._last + "\r")
            self.stream.flush()
            self._last = 0
