"""Every bad input of bad_inputs.yaml: a non-zero exit, one line on stderr that names the place, no traceback,
and nothing written; a few of them also through a real `kdistill` process, whose stderr holds everything."""

from __future__ import annotations

import subprocess

import pytest

from conftest import tiny_config_dict
from faultkit import cli_env, kdistill_cmd, load_bad_inputs, prepare_bad_input, run_bad_input

CASES = load_bad_inputs()


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_models):
    return tiny_config_dict(tmp_path_factory.mktemp("base"), tiny_models)


def test_the_list_is_long_and_each_name_is_unique():
    assert len(CASES) >= 60 and len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_a_bad_input_ends_in_one_clear_line_and_writes_nothing(case, base, tmp_path):
    outcome = run_bad_input(case, base, tmp_path / "case")
    assert outcome.code != 0 and not outcome.traceback, outcome.stderr
    assert len(outcome.lines) == 1, outcome.stderr
    assert outcome.expect in outcome.lines[0], outcome.lines[0]
    assert not outcome.written, outcome.written


@pytest.mark.parametrize("name", ["batch size 0", "config is a folder", "student path missing", "an abbreviated flag",
                                  "output_dir under a regular file"])
def test_the_same_through_a_real_process(name, base, tmp_path):
    """Here stderr is everything the process wrote: log lines and warnings would show."""
    case = next(c for c in CASES if c["name"] == name)
    folder = tmp_path / "case"
    case, argv = prepare_bad_input(case, base, folder)
    before = sorted(folder.rglob("*"))
    done = subprocess.run(kdistill_cmd(*argv), env=cli_env(**case.get("env", {})), capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and case["expect"] in lines[0], done.stderr
    assert "Traceback" not in done.stderr and sorted(folder.rglob("*")) == before


def test_a_quoted_field_longer_than_pythons_csv_limit_is_read_and_cut_to_max_chars(tmp_path, tiny_config):
    """A 10 MB quoted field was reported as bad quoting: it was Python's csv field-size limit (128 KiB)."""
    import csv
    from dataclasses import replace

    from conftest import make_texts
    from kdistill.data.loaders import load_examples

    path = tmp_path / "long.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(["text", "label"])
        writer.writerows(make_texts(20))
        writer.writerow(["great, fun\n" * 1_000_000, "positive"])  # 11 MB, commas and newlines inside
    cfg = tiny_config()
    examples = load_examples(replace(cfg.data, path=str(path)), cfg.task)
    assert len(examples) == 21 and len(examples[-1].text) <= cfg.data.max_chars
