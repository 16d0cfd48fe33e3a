"""Looking at a report in a real headless Chromium: layout measured, screenshots taken.

The report forbids scripts (its CSP), so it is loaded into an ``<iframe srcdoc>`` of the
wanted width inside a measuring page: the iframe's width is the report's viewport (media
queries included; a headless window cannot be narrower than 500 px), and the page's script
reads the layout through the same-origin ``contentDocument``.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

_MEASURE = """
document.getElementById('report').addEventListener('load', () => {
  const frame = document.getElementById('report'), doc = frame.contentDocument, vw = frame.contentWindow.innerWidth;
  const width = e => Math.round(e.getBoundingClientRect().width);
  const outside = [...doc.querySelectorAll('body *')]
    .filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > vw + 1)
    .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''));
  const pairs = [...doc.querySelectorAll('.pair')].map(p => p.querySelectorAll('img').length);
  document.body.setAttribute('data-measure', JSON.stringify({
    viewport: vw, scroll_width: doc.documentElement.scrollWidth, outside: outside.slice(0, 20),
    evidence_images: [...doc.querySelectorAll('.pair img')].map(width), images_per_pair: pairs,
    value_cells: [...doc.querySelectorAll('table.kv td:last-child')].map(width),
    histogram: [...doc.querySelectorAll('#scores img')].map(width),
    height: doc.documentElement.scrollHeight}));
});
"""


def chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _page(report: Path, width: int, height: int, work: Path) -> Path:
    page = work / f"measure_{width}.html"
    page.write_text(f'<!doctype html><html><body style="margin:0"><iframe id="report" style="border:0;'
                    f'width:{width}px;height:{height}px" srcdoc="{html.escape(report.read_text(), quote=True)}">'
                    f'</iframe><script>{_MEASURE}</script></body></html>')
    return page


def _run(binary: str, args: list[str], page: Path, window: int, height: int) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={max(window, 500)},{height}", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def measure(binary: str, report: Path, width: int, work: Path, height: int = 2000) -> dict:
    """Layout of ``report`` at ``width`` CSS px: viewport, scroll width, elements past the
    right edge (outside scroll boxes), widths of evidence images, key/value cells, histogram."""
    page = _page(report, width, height, work)
    done = _run(binary, ["--virtual-time-budget=5000", "--dump-dom"], page, width + 20, height)
    found = re.search(r'data-measure="([^"]*)"', done.stdout)
    if not found:
        raise RuntimeError(f"no measurement from Chromium: {done.stderr[-1000:]}")
    return json.loads(html.unescape(found.group(1)))


def screenshot(binary: str, report: Path, width: int, out: Path, work: Path, height: int = 1600) -> Path:
    """A PNG of the first ``height`` px of ``report`` at ``width`` CSS px."""
    page = _page(report, width, height, work)
    _run(binary, [f"--screenshot={out}", "--virtual-time-budget=3000"], page, width, height)
    return out
