"""The generative report card: every row, metric and note is on it, text is escaped, and the page renders."""

import base64
import re
import sys
from pathlib import Path

import pytest

from kdistill.eval.generation import METRICS, comparison_rows
from kdistill.eval.judge import ANSWER_CUE, JUDGE_NOTE, JUDGE_PROMPT
from kdistill.report.card import write_card
from kdistill.report.generation import render_generation_html, render_generation_markdown

# the screenshot script is the one place that drives Chromium; the test uses it as a reader would
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from report_screenshot import CHROMIUM, render_in_chromium  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEACHER_NOTE = ("No human-written summaries are reachable here: the references are the teacher's own summaries, "
                "so ROUGE measures agreement with the teacher")


def _cost(tokens_per_s: float, seconds_p50: float, parameters: int) -> dict:
    return {"outputs": 8, "seconds_p50": seconds_p50, "seconds_p95": 1.5 * seconds_p50, "tokens_per_s": tokens_per_s,
            "generated_tokens": 400, "max_new_tokens": 64, "threads": 2, "parameters": parameters,
            "size_on_disk_bytes": 4 * parameters}


def _metrics(rouge_l: float, faithfulness: float) -> dict:
    return {"rouge1": rouge_l + 0.1, "rouge2": rouge_l - 0.1, "rougeL": rouge_l, "similarity": 0.6,
            "faithfulness": faithfulness, "compression_ratio": 9.5, "copy_rate_1": 0.9, "copy_rate_2": 0.6,
            "copy_rate_3": 0.45, "novel_ngram_share_1": 0.1, "novel_ngram_share_2": 0.4,
            "novel_ngram_share_3": 0.55, "output_words": 31.0}


def _seeded(name: str, per_seed: dict, cost: dict) -> dict:
    from kdistill.eval.generation import summarize_seeds

    return {"name": name, "seeds": per_seed, "summary": summarize_seeds(per_seed),
            "training": {seed: {"steps": 40} for seed in per_seed}, "cost": cost}


def made_up_results() -> dict:
    """A summarization run in which distillation disappoints: token-level KD + CE is below sequence-level KD."""
    models = {
        "teacher": {"name": "qwen <script>alert(1)</script>", "metrics": _metrics(1.0, 0.91),
                    "cost": _cost(20.0, 3.2, 1_500_000_000)},
        "student_untrained": {"name": "smol-135m", "metrics": _metrics(0.12, 0.30), "cost": _cost(90.0, 0.7, 135_000_000)},
        "student_sequence_kd": _seeded("smol-135m", {"0": _metrics(0.36, 0.72), "1": _metrics(0.34, 0.70)},
                                       _cost(88.0, 0.72, 135_000_000)),
        "student_distilled": _seeded("smol-135m", {"0": _metrics(0.30, 0.60), "1": _metrics(0.26, 0.64)},
                                     _cost(80.0, 0.8, 135_000_000)),
    }
    judge = {"model": "qwen2.5-1.5b-instruct", "prompt": JUDGE_PROMPT + ANSWER_CUE, "chat_template": False,
             "verbalizers": [" Yes", " No"], "max_source_tokens": 768, "note": JUDGE_NOTE}
    source = " ".join(f"word{i}" for i in range(100)) + " | pipe"
    return {"run": "bbc-sum", "task": "bbc-summaries", "task_kind": "generation", "evaluate_as": "summary",
            "references": "teacher", "test_examples": 8,
            "scorers": {"similarity": {"model": "all-MiniLM-L6-v2", "pearson_with_humans": 0.656}, "faithfulness": judge},
            "models": models, "comparison": comparison_rows(models, evaluate_as="summary"),
            "examples": [{"id": "tech-001", "source": source, "reference": "the teacher's summary",
                          "teacher": "the teacher's summary", "student_untrained": "word0 word0 word0",
                          "student_sequence_kd": "a <b>bold</b> claim | with a pipe",
                          "student_distilled": "a shorter summary"}],
            "timings": {"elicit_s": 120.0, "train_s": 600.0, "eval_s": 90.0, "total_s": 810.0}}


HISTORIES = {variant: {0: [{"step": 1, "train_ce": 2.0, "train_kd": 1.5}, {"step": 10, "train_ce": 1.2, "train_kd": 0.9},
                           {"step": 10, "val_target_ce": 1.4}, {"step": 20, "val_target_ce": 1.3}],
                       1: [{"step": 1, "train_ce": 2.1}, {"step": 20, "val_target_ce": 1.35}]}
             for variant in ("sequence_kd", "distilled")}


def _images(page: str) -> list[bytes]:
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert all(s.startswith("data:image/png;base64,") for s in sources), "every figure is embedded"
    return [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]


def _card_rows(page: str) -> list[str]:
    table = page[page.index('<table class="gen-card">'):]
    return re.findall(r"<tr[^>]*>(.*?)</tr>", table[:table.index("</table>")], re.S)


def test_markdown_card_has_every_model_metric_retention_speed_up_and_note():
    results = made_up_results()
    card = render_generation_markdown(results, "name: bbc-sum\n")
    for row in ("teacher (`qwen", "student, before training (`smol-135m`)", "student, sequence-level KD only",
                "student, token-level KD + CE"):
        assert row in card, row
    assert "| 0.280 ± 0.028 (2 seeds) | 28.0 % | 0.620 ± 0.028 | 68.1 % |" in card
    assert "| 4.0× / 4.0× |" in card, "80 / 20 tokens/s and 3.2 / 0.8 s per output"
    assert "| 1.000 | 100.0 % | 0.910 | 100.0 % |" in card and "| 1.0× / 1.0× |" in card
    for metric in METRICS:
        if metric not in ("exact_match", "token_f1"):
            assert re.search(rf"\| `{metric}` \|.* \| {re.escape(METRICS[metric])} \|", card), metric
    assert TEACHER_NOTE in card
    assert "Faithfulness judge: `qwen2.5-1.5b-instruct`, an LLM judge, not an NLI model" in card
    assert "Similarity scorer: `all-MiniLM-L6-v2`" in card and "Pearson 0.656, measured in this run (" in card
    assert "The judge is the teacher model itself" not in card
    assert "Is every claim in the summary supported by the article? Answer Yes or No.\nAnswer:" in card



def test_copying_against_the_teacher_is_stated_with_its_interval_in_both_cards():
    results = made_up_results()
    results["models"]["student_distilled"]["copy_gap_2"] = {"ngram": 2, "points": 13.46, "ci95": [9.81, 17.04],
                                                            "sources": 30, "seeds": 3}
    results["models"]["student_untrained"]["copy_gap_2"] = {"ngram": 2, "points": -1.0, "ci95": None, "sources": 1,
                                                            "seeds": 1}
    card = render_generation_markdown(results, "name: bbc-sum\n")
    assert ("- Copy rate of the student distilled with token-level KD + CE, minus the teacher's: **+13.5 points** of "
            "word bigrams taken from the article (95% interval +9.8 to +17.0, bootstrap over the articles; paired over "
            "30 test articles, mean of 3 seeds).") in card
    assert ("- Copy rate of the student before training, minus the teacher's: **-1.0 points** of word bigrams taken "
            "from the article (paired over 1 test articles).") in card
    assert "Copy rate of the student trained" not in card, "no gap measured, none stated"
    page = render_generation_html(results, HISTORIES, "name: bbc-sum\n")
    assert "<strong>+13.5 points</strong>" in page and "+9.8 to +17.0" in page
    assert "minus the teacher's" not in render_generation_markdown(made_up_results(), "")


def test_a_judge_that_is_the_teacher_is_named_as_such():
    results = made_up_results()
    results["scorers"]["faithfulness"]["model"] = results["models"]["teacher"]["name"]
    assert "The judge is the teacher model itself" in render_generation_markdown(results, "")


def test_a_disappointing_result_is_said_as_it_is():
    card = render_generation_markdown(made_up_results(), "")
    assert "keeps **28.0 %** of the teacher's ROUGE-L" in card
    assert "speed-up over the teacher is **4.0×** in tokens/s and 4.0× in seconds per output (p50)." in card
    assert ("The student trained with sequence-level KD only scores 0.350 ± 0.014 ROUGE-L; the student distilled "
            "with token-level KD + CE is 0.070 below it.") in card


def test_examples_are_side_by_side_with_the_source_shortened_and_escaped():
    results = made_up_results()
    card = render_generation_markdown(results, "")
    row = next(line for line in card.splitlines() if line.startswith("| tech-001 |"))
    assert "word59 … |" in row and "word60" not in row
    assert "a &lt;b>bold&lt;/b> claim \\| with a pipe" in row, "a pipe in an output does not split the row"
    page = render_generation_html(results, {}, "")
    table = page[page.index('id="examples"'):]
    cells = [re.findall(r"<t[hd]>(.*?)</t[hd]>", r, re.S) for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)][:2]
    assert cells[0] == ["id", "source (first 60 words)", "reference", "teacher", "student, before training",
                        "student, sequence-level KD only", "student, token-level KD + CE"]
    assert cells[1][4:6] == ["word0 word0 word0", "a &lt;b&gt;bold&lt;/b&gt; claim | with a pipe"]


def test_page_is_self_contained_escaped_and_has_the_figures():
    results = made_up_results()
    page = render_generation_html(results, HISTORIES, "name: <bbc>\n")
    images = _images(page)
    assert len(images) == 1 + 2 and all(png.startswith(PNG_MAGIC) for png in images), "comparison + 2 variants"
    assert not re.search(r'(src|href)="(?!data:)', page) and "<script" not in page and "<link" not in page
    assert "qwen &lt;script&gt;alert(1)&lt;/script&gt;" in page and "name: &lt;bbc&gt;" in page
    assert TEACHER_NOTE.replace("'", "&#x27;") in page
    rows = _card_rows(page)
    assert len(rows) == 1 + 4 and "28.0 %" in rows[4] and "4.0× / 4.0×" in rows[4]
    assert '<tr class="distilled">' in page
    for section in ("card", "comparison", "training", "metrics", "scorers", "examples", "config"):
        assert f'id="{section}"' in page, section
    assert "Pearson 0.656" in page and "<code>qwen2.5-1.5b-instruct</code>" in page
    assert "Generation cost measured by one harness" in page and "total 810 s." in page


def test_missing_models_and_qa_runs_still_render():
    results = made_up_results()
    for key in ("teacher", "student_untrained"):
        del results["models"][key]
        for example in results["examples"]:
            del example[key]
    results["comparison"] = comparison_rows(results["models"], evaluate_as="summary")
    card = render_generation_markdown(results, "")
    assert "% of teacher" in card and "| — |" in card and "keeps" not in card
    page = render_generation_html(results, {}, "")
    assert len(_card_rows(page)) == 1 + 2 and len(_images(page)) == 1

    qa = made_up_results()
    qa |= {"evaluate_as": "qa", "references": "data", "scorers": {"similarity": None, "faithfulness": None}}
    for entry in qa["models"].values():
        for metrics in [entry.get("metrics")] + list(entry.get("seeds", {}).values()):
            if metrics:
                metrics |= {"token_f1": 0.5, "exact_match": 0.25}
                del metrics["faithfulness"]
        if "seeds" in entry:
            from kdistill.eval.generation import summarize_seeds
            entry["summary"] = summarize_seeds(entry["seeds"])
    qa["comparison"] = comparison_rows(qa["models"], evaluate_as="qa")
    card = render_generation_markdown(qa, "")
    assert "| model | token F1 |" in card and "the answers that come with the data" in card
    assert "Faithfulness was not judged." in card and "No similarity scorer was run." in card
    assert len(_images(render_generation_html(qa, {}, ""))) == 1


def test_the_card_writer_writes_a_generation_runs_cards_and_plots(tmp_path):
    results = made_up_results()
    path = write_card(tmp_path, results, "name: bbc-sum\n")
    assert path == tmp_path / "report.md" and TEACHER_NOTE in path.read_text(encoding="utf-8")
    assert (tmp_path / "report.html").exists()
    assert [p.name for p in (tmp_path / "plots").glob("*.png")] == ["comparison.png"], "no histories on disk"


def test_generation_page_renders_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found; install Chromium with `apt-get install chromium` (.ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
    html_path = tmp_path / "report.html"
    html_path.write_text(render_generation_html(made_up_results(), HISTORIES, "name: bbc-sum\n"), encoding="utf-8")
    seen = render_in_chromium(html_path, tmp_path / "report.png")
    assert seen["errors"] == []
    assert len(seen["images"]) == 3
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in seen["images"]), seen["images"]
    assert {"card", "comparison", "training", "metrics", "scorers", "examples", "config", "references"} <= set(
        seen["sections"])
    assert seen["title"] == "Report card: bbc-sum (bbc-summaries, generation: summary)"
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_MAGIC)
