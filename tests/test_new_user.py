"""What a new user tripped over: the saved student in plain 🤗 tools, load reports, `--set` errors, file modes."""

from __future__ import annotations

import logging
import os
import stat

import pytest
import yaml

from conftest import FILLER, NEGATIVE, POSITIVE, tiny_config_dict
from kdistill import api
from kdistill.cli import main


def _long_texts(n: int = 12) -> list[str]:
    """Texts far longer than the student's max_length (32 tokens): where truncation decides the answer, the last
    words carry the opposite sentiment of the first 32."""
    texts = []
    for i in range(n):
        first, last = (POSITIVE, NEGATIVE) if i % 2 else (NEGATIVE, POSITIVE)
        texts.append(" ".join([first[i % len(first)]] * 20 + FILLER * 3 + [last[i % len(last)]] * 30))
    return texts


def test_pipeline_on_the_saved_student_truncates_and_answers_as_kdistill_predict_does(tmp_path, tiny_models, tiny_config):
    from transformers import AutoTokenizer, pipeline

    cfg = tiny_config(evaluation={"seeds": [0]}, training={"epochs": 1})
    folder = api.train(cfg, variant="labels_only", seed=0, progress=False)
    assert AutoTokenizer.from_pretrained(folder).model_max_length == cfg.student.max_length
    texts = _long_texts()
    ours = [row["label"] for row in api.predict(folder, texts)]
    theirs = [row["label"] for row in pipeline("text-classification", model=str(folder), truncation=True)(texts)]
    assert theirs == ours


def test_a_new_classification_head_is_one_plain_line_not_a_load_report(tmp_path, tiny_models, caplog):
    from kdistill.config import ModelConfig, TaskConfig
    from kdistill.models import _HEADS_TOLD, load_label_model

    _HEADS_TOLD.clear()
    task = TaskConfig(name="t", labels=["negative", "positive"], prompt_template="{text}",
                      verbalizers={"negative": " negative", "positive": " positive"})
    with caplog.at_level(logging.INFO):
        for _ in range(3):  # a run loads the student once per seed and variant
            load_label_model(ModelConfig(model=str(tiny_models["encoder"])), task)
    assert not any("LOAD REPORT" in r.getMessage() or "MISSING" in r.getMessage() for r in caplog.records)
    told = [r for r in caplog.records if "new classification head" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO and "classifier.weight" in told[0].getMessage()


@pytest.mark.parametrize("override, named", [
    ("training.batch_size=two", "--set training.batch_size=two: expected int"),
    ("training.epoch=2", "--set training.epoch=2: unknown field 'epoch'. Did you mean 'epochs'?"),
    ("training.epochs=[1", "--set 'training.epochs=[1': the value '[1' is not valid YAML"),
])
def test_an_error_in_a_set_override_names_the_override_not_the_yaml_file(tmp_path, tiny_models, capsys, override, named):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, tiny_models)))
    assert main(["validate", str(config), "--no-models", "--set", override]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--resum"])
    assert exit_.value.code == 2 and "--resum" in capsys.readouterr().err


def test_saved_artefacts_follow_the_umask_like_save_pretrained(tmp_path, tiny_models, tiny_config):
    old = os.umask(0o022)
    try:
        cfg = tiny_config(evaluation={"seeds": [0]}, training={"epochs": 1})
        folder = api.train(cfg, variant="labels_only", seed=0, progress=False)
    finally:
        os.umask(old)
    written = [p for p in [folder, *folder.rglob("*"), *folder.parent.glob("*.json")]]
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written}
    assert all(mode == (0o755 if p.is_dir() else 0o644) for p, mode in zip(written, modes.values())), modes


def test_kdistill_run_shows_its_own_bars_not_a_loading_bar_per_model(tmp_path, tiny_models, capsys):
    import huggingface_hub.utils
    import transformers.utils.logging

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tmp_path, tiny_models, evaluation={"seeds": [0]},
                                                      training={"epochs": 1})))
    try:
        assert main(["run", str(config)]) == 0
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert not huggingface_hub.utils.are_progress_bars_disabled()  # a download from a hub still shows its bar
    finally:
        transformers.utils.logging.enable_progress_bar()
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "training distilled seed 0" in err
