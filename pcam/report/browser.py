"""The report as a browser shows it: headless Chromium's rendered DOM and screenshots.

Snakemake's report is a React page: its views exist only once its scripts ran, so checks read
the DOM Chromium renders (`--dump-dom`), not the HTML file. A view other than the landing page is
opened the way its menu entry does it (`app.showCategory`, then `app.setView` with the result's
data URI), by a script appended to a copy of the report (`open_view`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

WINDOW = (1400, 1000)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
]  # fmt: skip
NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((path for name in NAMES if (path := shutil.which(name))), None)


def _run(page: Path, *args: str, window: tuple[int, int], budget_ms: int) -> str:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium on PATH (tried: " + ", ".join(NAMES) + ")")
    with tempfile.TemporaryDirectory(prefix="pcam-chromium-") as profile:
        cmd = [
            exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}", *args, Path(page).resolve().as_uri(),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {page} ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def dump_dom(page: Path, *, window: tuple[int, int] = WINDOW, budget_ms: int = 10_000) -> str:
    """The DOM of `page` after its scripts ran (Chromium `--dump-dom`)."""
    return _run(page, "--dump-dom", window=window, budget_ms=budget_ms)


def screenshot(
    page: Path, png: Path, *, window: tuple[int, int] = WINDOW, budget_ms: int = 10_000
) -> None:
    """A PNG of `page` as a `window`-sized browser window shows it."""
    _run(page, f"--screenshot={Path(png).resolve()}", window=window, budget_ms=budget_ms)


# After the view renders, the script records whether the pane's content is wider than the pane
# (horizontal cut-off) in <body data-pcam-fit="..."> for `dump_dom` to read.
_VIEW_SCRIPT = """
<script>
window.addEventListener("load", () => setTimeout(() => {
  const path = Object.keys(results).find(p => p.endsWith(%(suffix)s));
  const entry = results[path];
  const subs = Object.keys(categories[%(category)s]);
  let sub = %(subcategory)s;
  if (sub === null && subs.length === 1) { sub = subs[0]; }  // as app.showCategory does
  const content = entry.mime_type === "text/html" ? "html" : "img";
  app.setView({navbarMode: sub === null ? "category" : "subcategory", category: %(category)s,
               subcategory: sub, content: content, contentPath: entry.data_uri,
               resultPath: path});
  setTimeout(() => {
    const pane = document.querySelector("#app > div > div:last-child");
    const shown = pane.querySelector("img, iframe");
    const box = shown ? shown.getBoundingClientRect() : {width: 0, height: 0};
    const fit = {pane_width: pane.clientWidth, pane_height: pane.clientHeight,
                 width: box.width, height: box.height,
                 overflow_x: pane.scrollWidth > pane.clientWidth,
                 overflow_y: pane.scrollHeight > pane.clientHeight};
    document.body.dataset.pcamFit = JSON.stringify(fit);
  }, 500);
}, 500));
</script>
"""


_PAGE_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const root = document.documentElement;
  document.body.dataset.pcamFit = JSON.stringify({pane_width: window.innerWidth,
    width: root.scrollWidth, overflow_x: root.scrollWidth > window.innerWidth});
});
</script>
"""


def _with_script(page: Path, out: Path, script: str) -> Path:
    head, tag, tail = Path(page).read_text(encoding="utf-8").rpartition("</body>")
    Path(out).write_text(head + script + tag + tail, encoding="utf-8")
    return Path(out)


def measure_page(page: Path, out: Path) -> Path:
    """A copy of a report page (e.g. a gallery) that records whether it is wider than the window
    (`view_fit` reads it); open it at the pane's size to see what the report's frame shows."""
    return _with_script(page, out, _PAGE_SCRIPT)


def open_view(
    report: Path, out: Path, *, suffix: str, category: str, subcategory: str | None = None
) -> Path:
    """A copy of `report` that opens the result whose path ends with `suffix` on load."""
    script = _VIEW_SCRIPT % {
        "suffix": json.dumps(suffix),
        "category": json.dumps(category),
        "subcategory": json.dumps(subcategory),
    }
    return _with_script(report, out, script)


def view_fit(dom: str) -> dict | None:
    """The measurements `open_view`'s or `measure_page`'s script left in the DOM (None if it
    did not run)."""
    marker = 'data-pcam-fit="'
    start = dom.find(marker)
    if start < 0:
        return None
    raw = dom[start + len(marker) : dom.index('"', start + len(marker))]
    return json.loads(raw.replace("&quot;", '"'))
