"""Render HTML pages in headless Chromium and check the screenshots are not blank.

    python scripts/screenshot.py PAGE.html [PAGE.html ...] [--out DIR] [--chromium /usr/bin/chromium]

Each page becomes DIR/<name>.png (1280 x 2000). A page counts as rendered when its screenshot has at least
--min-colours distinct pixel colours: a blank page, or one Chromium could not load, has one or two. The PNG is
decoded with zlib alone (no PIL needed). Exit status 1 when a page is blank or Chromium fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium(given: str | None = None) -> str | None:
    for name in ([given] if given else []) + ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, png: Path, chromium: str, size: str = "1280,2000", timeout: float = 120) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={size}",
            page.resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot of {page} (exit {done.returncode}): {done.stderr[-500:]}")


# Appended to a copy of the page: each table's width and the width of the box it is drawn in, as a <pre>.
_MEASURE = """<script>
const widths = [...document.querySelectorAll('table')].map(t => {
  const box = t.parentElement.getBoundingClientRect(), page = document.documentElement.clientWidth;
  return Math.round(t.getBoundingClientRect().width) + ' ' + Math.round(Math.min(box.width, page));
});
const pre = document.createElement('pre'); pre.id = 'table-widths'; pre.textContent = widths.join(';');
document.body.appendChild(pre);
</script>"""


def table_widths(page: Path, chromium: str, width: int = 1280, timeout: float = 120) -> list[tuple[int, int]]:
    """(drawn width, visible width) in CSS pixels of every table of `page` in a `width`-pixel window: a table
    wider than its visible width shows its last columns only when scrolled."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / page.name
        copy.write_text(page.read_text() + _MEASURE)
        cmd = [chromium, *FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={width},2000", "--dump-dom"]
        done = subprocess.run([*cmd, copy.as_uri()], capture_output=True, text=True, timeout=timeout)
    found = re.search(r'<pre id="table-widths">([^<]*)</pre>', done.stdout)
    if found is None:
        raise RuntimeError(f"chromium measured no table of {page} (exit {done.returncode}): {done.stderr[-500:]}")
    return [tuple(int(n) for n in pair.split()) for pair in found.group(1).split(";") if pair]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (bit depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the row filter (PNG spec, section 9)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def distinct_colours(png: Path, step: int = 2) -> int:
    """Distinct pixel colours, sampling every `step`-th pixel of every `step`-th row (enough to tell a page from
    a blank one, and fast in pure Python)."""
    width, height, rows = png_pixels(png.read_bytes())
    bpp = len(rows[0]) // width
    return len({row[x * bpp : x * bpp + 3] for row in rows[::step] for x in range(0, width, step)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("runs/screenshots"))
    parser.add_argument("--chromium", default=None)
    parser.add_argument("--min-colours", type=int, default=16)
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no chromium found (apt-get install chromium)", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    failed = False
    for page in args.pages:
        png = args.out / f"{page.parent.name}-{page.stem}.png"
        screenshot(page, png, chromium)
        colours = distinct_colours(png)
        ok = colours >= args.min_colours
        failed |= not ok
        print(f"{'ok   ' if ok else 'BLANK'} {page} -> {png}: {colours} distinct colours")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
