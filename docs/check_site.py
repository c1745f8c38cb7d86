"""Check the built site in a real browser: screenshots at desktop and phone widths, links and images.

    make docs-check            # builds site/ first
    python docs/check_site.py [--site site] [--out site_screenshots]

1. Every HTML page of ``site/`` is parsed; every internal ``href`` and ``src`` must name a file of the
   site (a folder resolves to its ``index.html``) and every ``#fragment`` an ``id`` on the target page.
2. ``site/`` is served on 127.0.0.1 (a free port) and headless Chromium screenshots the front page,
   a tutorial with its figure and an API page at 1280 px (desktop) and 390 px (phone) wide into
   ``--out``; each screenshot must hold content (not one flat colour, and enough pixels that differ
   from the background).

Installs nothing: Chromium comes from the system (Debian: ``apt-get install chromium``). Exit status
0 when every check passes, 1 when one fails, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
from matplotlib import image as mpimg

ROOT = Path(__file__).resolve().parents[1]
#: (name, path under the site) of the pages photographed.
PAGES = (("front", "/"), ("tutorial", "/tutorials/bouncing-ball/"), ("api", "/reference/solvers/"))
#: (name, width, height) of the browser windows, in CSS pixels.
WIDTHS = (("desktop", 1280, 2000), ("phone", 390, 1600))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """The links, image sources and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []  # (attribute, value)
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id":
                self.ids.add(value)
            elif (tag, name) in {("a", "href"), ("link", "href"), ("img", "src"), ("script", "src"), ("source", "src")}:
                self.links.append((f"<{tag} {name}>", value))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # one line per request is noise here
        pass


def _target(site: Path, path: str) -> Path | None:
    """The file of the site that serves URL path ``path``, or None."""
    candidate = site / unquote(path).lstrip("/")
    if candidate.is_dir():
        candidate = candidate / "index.html"
    return candidate if candidate.is_file() else None


def check_links(site: Path) -> list[str]:
    """Every internal link, image and anchor of every page resolves; returns the failures."""
    pages: dict[Path, _Page] = {}
    for html in sorted(site.rglob("*.html")):
        parser = _Page()
        parser.feed(html.read_text(encoding="utf-8"))
        pages[html] = parser
    failures = []
    for html, parser in pages.items():
        page_url = "/" + html.relative_to(site).as_posix()
        for attribute, value in parser.links:
            parts = urlsplit(value)
            if parts.scheme or parts.netloc or value.startswith(("mailto:", "javascript:", "data:")):
                continue  # external: not this check's business (the site must work offline)
            resolved = urlsplit(urljoin(page_url, value))
            target = _target(site, resolved.path) if resolved.path else html
            where = f"{html.relative_to(site)}: {attribute} {value!r}"
            if target is None:
                failures.append(f"{where} names no file of the site")
            elif target.suffix in {".png", ".jpg", ".svg"} and target.stat().st_size == 0:
                failures.append(f"{where} is an empty image")
            elif resolved.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(resolved.fragment) not in ids:
                    failures.append(f"{where}: no id {resolved.fragment!r} on {target.relative_to(site)}")
    return failures


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(browser: str, url: str, width: int, height: int, path: Path) -> None:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            f"--window-size={width},{height}",
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def blank_reason(path: Path) -> str | None:
    """Why the screenshot counts as blank, or None when it holds content."""
    if not path.is_file() or path.stat().st_size == 0:
        return "no image written"
    pixels = mpimg.imread(path)[..., :3]  # (H, W, 3) in [0, 1]
    background = np.median(pixels.reshape(-1, 3), axis=0)
    differs = np.abs(pixels - background).max(axis=-1) > 0.1  # (H, W)
    if pixels.std() < 0.01:
        return f"one flat colour (std {pixels.std():.4f})"
    if differs.mean() < 0.01:
        return f"only {100 * differs.mean():.2f}% of pixels differ from the background"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site (make docs)")
    parser.add_argument("--out", type=Path, default=ROOT / "site_screenshots", help="where the screenshots go")
    args = parser.parse_args()
    if not (args.site / "index.html").is_file():
        print(f"{args.site} holds no built site: run 'make docs' first.", file=sys.stderr)
        return 1
    failures = check_links(args.site)
    print(f"links and images: {len(failures)} broken" + "".join(f"\n  {f}" for f in failures))

    browser = find_browser()
    if browser is None:
        print(
            "Chromium was not found (looked for " + ", ".join(BROWSERS) + "). On Debian or Ubuntu:\n"
            "    apt-get update && apt-get install -y chromium\nthen run this again.",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(args.site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for page, path in PAGES:
            for width_name, width, height in WIDTHS:
                shot = args.out / f"{page}_{width_name}.png"
                shot.unlink(missing_ok=True)
                screenshot(browser, base + path, width, height, shot)
                reason = blank_reason(shot)
                print(f"{shot}: {'BLANK, ' + reason if reason else 'content'}")
                if reason:
                    failures.append(f"{shot}: {reason}")
    finally:
        server.shutdown()
    print("site check: " + ("passed" if not failures else f"{len(failures)} failure(s)"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
