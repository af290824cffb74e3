"""Render a report in headless Chromium to a PNG, so a person (or a test) can look at what a reader sees.

    python -m plateaulab.report.render REPORT_DIR/report.html out.png [--width 1400] [--height 4000]

Needs Debian's ``chromium`` package (or google-chrome / chromium-browser on PATH, or $CHROMIUM). The flags
keep the browser off the network: the report is self-contained and must render without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import InputError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path, png_path, *, width: int = 1400, height: int = 4000, timeout: float = 120.0) -> Path:
    """Screenshot of the top ``width`` x ``height`` pixels of ``html_path`` as rendered by Chromium."""
    exe = find_chromium()
    if exe is None:
        raise InputError("no Chromium found (tried $CHROMIUM, " + ", ".join(CANDIDATES) + "); "
                         "install Debian's `chromium` package")
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise InputError(f"no report at {html_path}")
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="plateaulab-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png_path}",
               f"--window-size={int(width)},{int(height)}", html_path.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png_path.exists():
        raise InputError(f"chromium failed to render {html_path} (exit {proc.returncode}): "
                         f"{proc.stderr.strip()[-500:]}")
    return png_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m plateaulab.report.render", description=__doc__.splitlines()[0])
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=4000)
    args = p.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, width=args.width, height=args.height))
    except InputError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
