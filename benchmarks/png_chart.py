"""A line chart written as a PNG with the standard library alone (zlib for the compression).

The benchmarks plot GB/s against tensor size; a plotting library would be the project's only
dependency for one picture, so this draws it: axes, ticks, lines, a legend, and text in a 5x7
bitmap font (upper case; lower case is drawn as upper case).
"""

from __future__ import annotations

import math
import struct
import zlib

Color = tuple[int, int, int]

# 5x7 glyphs: seven rows of five bits, the high bit leftmost.
_FONT = {
    "A": "0E 11 11 1F 11 11 11", "B": "1E 11 11 1E 11 11 1E", "C": "0E 11 10 10 10 11 0E",
    "D": "1C 12 11 11 11 12 1C", "E": "1F 10 10 1E 10 10 1F", "F": "1F 10 10 1E 10 10 10",
    "G": "0E 11 10 17 11 11 0F", "H": "11 11 11 1F 11 11 11", "I": "0E 04 04 04 04 04 0E",
    "J": "07 02 02 02 02 12 0C", "K": "11 12 14 18 14 12 11", "L": "10 10 10 10 10 10 1F",
    "M": "11 1B 15 15 11 11 11", "N": "11 11 19 15 13 11 11", "O": "0E 11 11 11 11 11 0E",
    "P": "1E 11 11 1E 10 10 10", "Q": "0E 11 11 11 15 12 0D", "R": "1E 11 11 1E 14 12 11",
    "S": "0F 10 10 0E 01 01 1E", "T": "1F 04 04 04 04 04 04", "U": "11 11 11 11 11 11 0E",
    "V": "11 11 11 11 11 0A 04", "W": "11 11 11 15 15 15 0A", "X": "11 11 0A 04 0A 11 11",
    "Y": "11 11 0A 04 04 04 04", "Z": "1F 01 02 04 08 10 1F",
    "0": "0E 11 13 15 19 11 0E", "1": "04 0C 04 04 04 04 0E", "2": "0E 11 01 02 04 08 1F",
    "3": "1F 02 04 02 01 11 0E", "4": "02 06 0A 12 1F 02 02", "5": "1F 10 1E 01 01 11 0E",
    "6": "06 08 10 1E 11 11 0E", "7": "1F 01 02 04 08 08 08", "8": "0E 11 11 0E 11 11 0E",
    "9": "0E 11 11 0F 01 02 0C", " ": "00 00 00 00 00 00 00", ".": "00 00 00 00 00 0C 0C",
    ",": "00 00 00 00 0C 04 08", ":": "00 0C 0C 00 0C 0C 00", "-": "00 00 00 1F 00 00 00",
    "+": "00 04 04 1F 04 04 00", "/": "00 01 02 04 08 10 00", "(": "02 04 08 08 08 04 02",
    ")": "08 04 02 02 02 04 08", "%": "18 19 02 04 08 13 03", "_": "00 00 00 00 00 00 1F",
    "[": "0E 08 08 08 08 08 0E", "]": "0E 02 02 02 02 02 0E", "=": "00 00 1F 00 1F 00 00",
    "*": "00 04 15 0E 15 04 00", "?": "0E 11 01 02 04 00 04",
}
_GLYPHS = {ch: [int(row, 16) for row in rows.split()] for ch, rows in _FONT.items()}

WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75), (23, 190, 207)]


class Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        for dy in range(size):
            for dx in range(size):
                px, py = x + dx - size // 2, y + dy - size // 2
                if 0 <= px < self.width and 0 <= py < self.height:
                    i = 3 * (py * self.width + px)
                    self.pixels[i : i + 3] = bytes(color)

    def line(self, x0: float, y0: float, x1: float, y1: float, color: Color, width: int = 1, dash: int = 0) -> None:
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for k in range(steps + 1):
            if dash and (k // dash) % 2:
                continue
            t = k / steps
            self.dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), color, width)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 2, anchor: str = "left") -> None:
        """Draws text with its top at y; anchor "left", "center" or "right" of x."""
        advance = 6 * scale
        if anchor != "left":
            x -= len(text) * advance // (2 if anchor == "center" else 1)
        for i, ch in enumerate(text.upper()):
            for row, bits in enumerate(_GLYPHS.get(ch, _GLYPHS["?"])):
                for col in range(5):
                    if bits & (0x10 >> col):
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(x + i * advance + col * scale + sx, y + row * scale + sy, color)

    def png(self) -> bytes:
        raw = b"".join(b"\0" + bytes(self.pixels[3 * y * self.width : 3 * (y + 1) * self.width]) for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_tick_label=lambda x: f"{x:g}",
    dashed: tuple[str, ...] = (),
    width: int = 1000,
    height: int = 600,
) -> bytes:
    """PNG bytes of y against x (x on a log2 axis), one line per series; series named in
    `dashed` are drawn dashed in gray-black (a ceiling)."""
    left, right, top, bottom = 90, 290, 80, 70
    points = [p for values in series.values() for p in values]
    xs = sorted({x for x, _ in points})
    lo, hi = math.log2(xs[0]), math.log2(xs[-1])
    hi = hi if hi > lo else lo + 1
    step = _nice_step(max(y for _, y in points) or 1.0)
    y_top = step * math.ceil(max(y for _, y in points) / step) or step

    canvas = Canvas(width, height)
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (math.log2(x) - lo) / (hi - lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / y_top * plot_h

    for k in range(int(round(y_top / step)) + 1):
        y = k * step
        canvas.line(left, py(y), left + plot_w, py(y), GRID)
        canvas.text(left - 8, int(py(y)) - 7, f"{y:g}", anchor="right")
    for x in xs:
        canvas.line(px(x), top, px(x), top + plot_h, GRID)
        canvas.text(int(px(x)), top + plot_h + 8, x_tick_label(x), anchor="center")
    canvas.line(left, top, left, top + plot_h, BLACK, 2)
    canvas.line(left, top + plot_h, left + plot_w, top + plot_h, BLACK, 2)
    canvas.text(width // 2 - right // 2, 12, title, scale=2, anchor="center")
    canvas.text(left + plot_w // 2, height - 30, x_label, anchor="center")
    canvas.text(10, top - 26, y_label)

    colors = iter(PALETTE)
    for i, (name, values) in enumerate(series.items()):
        color = BLACK if name in dashed else next(colors, BLACK)
        values = sorted(values)
        for (x0, y0), (x1, y1) in zip(values, values[1:]):
            canvas.line(px(x0), py(y0), px(x1), py(y1), color, 3, dash=8 if name in dashed else 0)
        for x, y in values:
            canvas.dot(round(px(x)), round(py(y)), color, 7)
        ly = top + 10 + 28 * i
        canvas.line(left + plot_w + 20, ly + 7, left + plot_w + 50, ly + 7, color, 3, dash=6 if name in dashed else 0)
        canvas.text(left + plot_w + 58, ly, name)
    return canvas.png()
