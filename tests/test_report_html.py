"""report.html: self-contained, escaped, the same figures as report.md, and it renders in headless Chromium."""

import base64
import re
import sys
from pathlib import Path

import pytest

from kdistill import api
from kdistill.report.html import render_html, render_stages_html, report_figures
from kdistill.report.label_markdown import render_markdown

# the screenshot script is the one place that drives Chromium; the test uses it as a reader would
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from kdistill.recipes.label_eval import _comparison
from report_screenshot import CHROMIUM, render_in_chromium  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cost(latency_ms: float, throughput: float, parameters: int) -> dict:
    return {"parameters": parameters, "size_on_disk_bytes": 4 * parameters, "latency_p50_ms": latency_ms,
            "latency_p95_ms": 1.2 * latency_ms, "throughput_examples_per_s": throughput, "device": "cpu",
            "threads": 2, "latency_examples": 3, "throughput_batch_size": 4}


def _metrics(f1: float, matrix: list[list[int]], warning: str | None = None) -> dict:
    return {"accuracy": f1 + 0.01, "macro_precision": f1, "macro_recall": f1, "macro_f1": f1,
            "per_class_recall": {"neg<ative>": 0.5, "positive": 0.5}, "confusion_matrix": matrix,
            "majority_prediction_share": 0.5, "majority_prediction_label": "positive", "collapse_warning": warning}


def made_up_results() -> dict:
    """A results.json as `api.evaluate` writes it, with a label and a model name that need escaping."""
    seeds = {"0": _metrics(0.80, [[8, 2], [2, 8]]), "1": _metrics(0.70, [[10, 0], [6, 4]], "predicts 'negative' for 80 %")}
    models = {
        "teacher": {"name": "tiny-lm <script>alert(1)</script>", "metrics": _metrics(0.75, [[7, 3], [2, 8]]),
                    "cost": _cost(100.0, 10.0, 268_000_000)},
        "student_untrained": {"name": "mini", "metrics": _metrics(0.40, [[10, 0], [10, 0]]),
                              "cost": _cost(10.0, 100.0, 22_000_000)},
        "student_distilled": {"name": "mini", "seeds": seeds, "cost": _cost(12.5, 80.0, 22_000_000),
                              "summary": {"macro_f1": {"mean": 0.75, "std": 0.0707},
                                          "accuracy": {"mean": 0.76, "std": 0.07}}},
    }
    results = {"run": "made-up", "task": "sentiment", "labels": ["neg<ative>", "positive"], "test_examples": 20,
               "data": {"totals": {"train": 100}, "labelled_train": 40, "counts": {"test": {"positive": 10}},
                        "rows_read": 120, "duplicates_removed": 0, "label_conflicts": {"count": 0}, "ignored_rows": 0,
                        "truncated": 0},
               "models": models}
    results["comparison"] = _comparison(models)
    return results


HISTORIES = {"distilled": {0: [{"step": 1, "epoch": 0, "lr": 1e-4, "train_ce": 0.7, "train_kd": 0.3},
                                {"step": 10, "epoch": 0, "lr": 5e-5, "train_ce": 0.4, "train_kd": 0.2},
                                {"step": 13, "epoch": 0, "val_macro_f1": 0.7}]}}


def _images(page: str) -> list[bytes]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), "every figure is embedded"
    return [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]


def test_page_is_self_contained_escaped_and_carries_the_cards_figures():
    results = made_up_results()
    page = render_html(results, HISTORIES, "name: made-up\n")
    images = _images(page)
    # comparison + one training-curve figure per variant + one confusion matrix per model
    assert len(images) == 1 + 1 + 3 and all(png.startswith(PNG_MAGIC) for png in images)
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "<link" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "seed 1: predicts &#x27;negative&#x27; for 80 %" in page and "⚠" in page
    # the card shows the figures report.md shows, row by row
    markdown = render_markdown(results, "name: made-up\n")
    for row in results["comparison"]:
        for figure in (f"{row['macro_f1']:.3f}", f"{row['retained_pct']:.1f} %", f"{row['speedup_latency']:.1f}×",
                       f"{row['parameters'] / 1e6:,.1f} M", f"{row['latency_p50_ms']:.1f} / "):
            assert figure in markdown and figure in page, figure
    assert "0.750 ± 0.071 (2 seeds)" in page
    assert 'id="examples"' not in page, "a classification run has no example outputs"


def test_generative_examples_are_side_by_side():
    results = made_up_results()
    results["examples"] = [
        {"input": "Summarize: a <b>long</b> text", "reference": "short",
         "outputs": {"teacher": "teacher's summary", "student_distilled": "student's summary"}},
        {"input": "Summarize: another", "reference": None, "outputs": {"student_distilled": "only the student"}},
    ]
    page = render_html(results, {}, "name: made-up\n")
    table = page[page.index('id="examples"'):]
    table = table[:table.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row, re.S) for row in rows]
    assert cells[0] == ["input", "reference", "teacher", "student, distilled"]
    assert cells[1] == ["Summarize: a &lt;b&gt;long&lt;/b&gt; text", "short", "teacher&#x27;s summary",
                        "student&#x27;s summary"]
    assert cells[2] == ["Summarize: another", "—", "—", "only the student"]
    assert 'id="training"' not in page, "no histories, no training curves"


def test_report_html_renders_in_headless_chromium(tiny_config):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found; install Chromium with `apt-get install chromium` (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    cfg = tiny_config(training={"epochs": 1}, evaluation={"seeds": [0]})
    run_dir = api.run(cfg, progress=False)
    plots = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert plots == ["comparison.png", "confusion_student_distilled.png", "confusion_student_labels_only.png",
                     "confusion_student_untrained.png", "confusion_teacher.png", "training_distilled.png",
                     "training_labels_only.png"]
    screenshot = run_dir / "plots" / "report.png"
    seen = render_in_chromium(run_dir / "report.html", screenshot)
    assert seen["errors"] == []
    assert len(seen["images"]) == len(plots)
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in seen["images"]), seen["images"]
    assert {"card", "comparison", "training", "confusion", "config", *plots} <= set(seen["sections"])
    assert seen["title"] == "Report card: tiny (tiny-sentiment)"
    png = screenshot.read_bytes()
    assert png.startswith(PNG_MAGIC)
    height = int.from_bytes(png[20:24], "big")  # the IHDR chunk: a full page is taller than the 900 px viewport
    assert height > 900


def made_up_stages() -> list[dict]:
    """The records of a two-stage run's results.json; the second stage has a third label and other figures."""
    first, second = made_up_results(), made_up_results()
    second["task"], second["labels"] = "sentiment3", ["neg<ative>", "neutral", "positive"]
    second["models"]["student_distilled"]["summary"]["macro_f1"] = {"mean": 0.6123, "std": 0.0321}
    second["comparison"] = _comparison(second["models"])
    second["timings"], first["timings"] = {"total_s": 600.0}, {"total_s": 300.0}
    return [{"stage": 1, "name": "reviews", "task": "sentiment", "run_dir": "runs/x/stages/1-reviews",
             "starts_from": "the pretrained student", "optimizer": "new", "results": first},
            {"stage": 2, "name": "tweets", "task": "sentiment3", "run_dir": "runs/x/stages/2-tweets",
             "starts_from": "runs/x/stages/1-reviews", "optimizer": "carry", "results": second}]


def _stages_page(stages: list[dict]) -> str:
    plots = [report_figures(stage["results"], HISTORIES) for stage in stages]
    return render_stages_html("x", stages, plots, "name: x\nstages: [...]\n")


def test_stages_page_has_each_stages_card_and_figures_in_order():
    stages = made_up_stages()
    page = _stages_page(stages)
    assert not re.search(r'(src|href)="(?!data:|#)', page) and "<script" not in page
    ids = re.findall(r' id="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "ids stay unique with a section per stage"
    sections = re.findall(r'<section class="stage" id="stage-(\d)">(.*?)</section>', page, re.S)
    assert [number for number, _ in sections] == ["1", "2"]
    for stage, (_, section) in zip(stages, sections):
        results = stage["results"]
        assert f"Stage {stage['stage']}: {stage['name']} (task {stage['task']})" in section
        assert f"{stage['stage']}-title" in section and f'id="stage{stage["stage"]}-card"' in section
        distilled = next(r for r in results["comparison"] if r["model"] == "student_distilled")
        assert f"{distilled['macro_f1']:.3f} ± {distilled['macro_f1_std']:.3f} (2 seeds)" in section  # its own card
        # comparison + training curves + one confusion matrix per model, all embedded
        assert len(_images(section)) == 1 + 1 + 3 and all(png.startswith(PNG_MAGIC) for png in _images(section))
    assert "0.612 ± 0.032 (2 seeds)" not in sections[0][1], "stage 2's figures stay in stage 2"
    overview = page[:page.index("<section")]
    assert "carried (previous stage&#x27;s AdamW moments" in overview and "new AdamW" in overview
    assert "stage 1&#x27;s students (same variant and seed)" in overview and "the pretrained mini" in overview
    assert "5.0 min" in overview and "10.0 min" in overview and "in all (the stages' sum): 15.0 min" in overview
    assert page.count('id="config"') == 1


def test_stages_page_renders_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found; install Chromium with `apt-get install chromium` (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    page = tmp_path / "report.html"
    page.write_text(_stages_page(made_up_stages()), encoding="utf-8")
    seen = render_in_chromium(page, tmp_path / "report.png")
    assert seen["errors"] == []
    assert len(seen["images"]) == 2 * 5
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in seen["images"]), seen["images"]
    for stage in (1, 2):
        assert {f"stage-{stage}", *(f"stage{stage}-{s}" for s in ("card", "comparison", "training", "confusion")),
                f"stage{stage}-comparison.png"} <= set(seen["sections"])
    assert seen["title"] == "Report card: x (2 stages)"


def test_the_card_flags_a_later_seeds_collapse_and_a_distilled_student_behind_labels_only():
    """Issue 23: the detail shows the first seed only, so a collapse in seed 1 is named at the top of the card;
    and a distilled student that trails the labels-only baseline is flagged, in report.md and report.html."""
    results = made_up_results()
    markdown = render_markdown(results, "name: made-up\n")
    assert "⚠ student, distilled: seed 1: predicts 'negative' for 80 %" in markdown
    assert "trails the labels-only baseline" not in markdown  # no labels-only row: nothing to trail
    results["models"]["student_labels_only"] = {
        "name": "mini", "seeds": {"0": _metrics(0.82, [[8, 2], [1, 9]]), "1": _metrics(0.80, [[8, 2], [2, 8]])},
        "cost": _cost(12.5, 80.0, 22_000_000),
        "summary": {"macro_f1": {"mean": 0.81, "std": 0.01}, "accuracy": {"mean": 0.82, "std": 0.01}}}
    results["comparison"] = _comparison(results["models"])
    markdown = render_markdown(results, "name: made-up\n")
    assert "⚠ **The distilled student trails the labels-only baseline**" in markdown
    assert "The distilled student trails the labels-only baseline" in render_html(results, HISTORIES, "name: x\n")
