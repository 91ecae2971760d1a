"""Regenerate a run's report.html (and plots/) and photograph it in headless Chromium.

    python benchmarks/report_screenshot.py RUN_DIR [--out benchmarks/results/report_html.png]
    python benchmarks/report_screenshot.py runs/sentiment-two-stage --out benchmarks/results/two_stage_report_html.png

The page is rendered from RUN_DIR/eval/results.json, the students' training histories and
RUN_DIR/config.yaml as it ran (so runs made by older versions of the config still render); a
multi-stage run's page has a section per stage, drawn from RUN_DIR/stages/<i>-<name>/. The
screenshot is the full page. Needs Debian's Chromium (`apt-get install chromium`) and the dev extra
(`pip install -e ".[dev]"`, for playwright); no browser is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# without the networking flags Chromium's own background connections are refused here and it stalls
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def render_in_chromium(html_path: Path, screenshot_path: Path, *, width: int = 1280) -> dict[str, Any]:
    """Open the page from file://, photograph it (full page) and say what the browser saw: console
    errors, page errors, every image's natural width, and the ids of the sections present."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page: {exc}"))
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            seen = page.evaluate("""() => ({
                images: [...document.images].map(img => ({alt: img.alt, naturalWidth: img.naturalWidth,
                                                          complete: img.complete})),
                sections: [...document.querySelectorAll("[id]")].map(el => el.id),
                title: document.title})""")
            screenshot_path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot_path), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, **seen}


def write_page(run_dir: Path, results: dict[str, Any]) -> Path:
    """report.html of RUN_DIR again: one run's page, or a multi-stage run's (results.json has `stages`)."""
    from kdistill.report.card import write_card
    from kdistill.report.stages import write_stages_html
    from kdistill.rundir import RunDir

    config_yaml = (run_dir / "config.yaml").read_text(encoding="utf-8")
    if "stages" in results:
        return write_stages_html(run_dir, results, config_yaml)
    write_card(run_dir, results, config_yaml)
    return RunDir(run_dir).report_html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "report_html.png")
    args = parser.parse_args(argv)
    results_path = args.run_dir / "eval" / "results.json"
    if not results_path.exists():
        parser.error(f"{results_path}: no results; run `kdistill run` (or `kdistill eval`) for this run first.")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} not found; install Chromium with `apt-get install chromium`.")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    html_path = write_page(args.run_dir, results)
    seen = render_in_chromium(html_path, args.out)
    broken = [img["alt"] for img in seen["images"] if not img["naturalWidth"]]
    print(f"{html_path}: {len(seen['images'])} figures, screenshot {args.out}")
    for problem in seen["errors"] + [f"image did not render: {alt}" for alt in broken]:
        print(f"  {problem}", file=sys.stderr)
    return 1 if seen["errors"] or broken else 0


if __name__ == "__main__":
    sys.exit(main())
