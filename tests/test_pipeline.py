"""The whole pipeline on tiny models, the CLI's error contract, and the saved student's loadability."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import tiny_config_dict
from kdistill import api
from kdistill.cli import COMMANDS, build_parser, main
from kdistill.errors import KdistillError
from kdistill.teachers.signal import load_member


def test_run_end_to_end_writes_every_field(tiny_config):
    cfg = tiny_config()
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"teacher", "student_untrained", "student_labels_only", "student_distilled"}
    for key in ("student_labels_only", "student_distilled"):
        assert set(models[key]["seeds"]) == {"0", "1"}
        assert set(models[key]["summary"]["macro_f1"]) == {"mean", "std"}
    for entry in models.values():
        metrics = entry.get("metrics") or next(iter(entry["seeds"].values()))
        for field in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class_recall",
                      "confusion_matrix", "majority_prediction_share"):
            assert field in metrics
        for field in ("parameters", "size_on_disk_bytes", "latency_p50_ms", "latency_p95_ms",
                      "throughput_examples_per_s"):
            assert entry["cost"][field] is not None and entry["cost"][field] > 0
    assert "teacher_agreement" in models["student_distilled"]["seeds"]["0"]
    rows = {r["model"]: r for r in results["comparison"]}
    assert rows["teacher"]["retained_pct"] == pytest.approx(100.0)
    assert rows["student_distilled"]["retained_pct"] == pytest.approx(
        100 * rows["student_distilled"]["macro_f1"] / rows["teacher"]["macro_f1"])
    assert set(results["timings"]) == {"elicit_s", "train_s", "eval_s", "total_s"}
    report = (run_dir / "report.md").read_text()
    assert "% of teacher" in report and "student, distilled" in report
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == "tiny"

    # the exported student loads with plain transformers and agrees with kdistill predict
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "student")
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    text = "the film was great and fun"
    with torch.no_grad():
        plain = model(**tok([text], return_tensors="pt")).logits.argmax(-1).item()
    assert model.config.id2label[plain] == api.predict(run_dir / "student", [text])[0]["label"]


def test_lm_student_runs_end_to_end(tiny_config, tiny_models):
    cfg = tiny_config(student={"model": str(tiny_models["lm2"])}, evaluation={"seeds": [0], "baselines": False})
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "student_distilled"}
    assert json.loads((run_dir / "student" / "kdistill.json").read_text())["kind"] == "causal_lm"


def _bad_csv_case(tmp_path, tiny_models, content: bytes):
    config = tiny_config_dict(tmp_path, tiny_models)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    config["data"]["path"] = str(bad)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp_path / "runs"


@pytest.mark.parametrize("content,expected", [
    (b"text,label\ngood film,positive\nbad film,postive\n", "bad.csv:3: field 'label'"),
    (b"text,label\ngood film,positive\n,negative\n", "bad.csv:3"),
    (b"text,label\ngood film,positive\nbad \xff\xfe film,negative\n", "bad.csv:3"),
    (b"review,label\ngood film,positive\n", "'text'"),
])
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, tiny_models, capsys, content, expected):
    path, runs = _bad_csv_case(tmp_path, tiny_models, content)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kdistill: error:") and expected in err and "\n" not in err
    assert not runs.exists()


def test_unknown_config_key_suggests_the_fix(tmp_path, tiny_models, capsys):
    config = tiny_config_dict(tmp_path, tiny_models)
    config["training"]["learning_rat"] = 0.1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_cli_table_and_help_agree():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS) >= {"run", "elicit", "train", "eval", "report", "predict", "validate", "ls"}
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "kdistill.cli", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: kdistill" in out.stdout


def test_unknown_flag_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--epochs", "3"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_transfer_set_hides_labels_and_keeps_the_baseline_fair(tiny_config):
    cfg = tiny_config(data={"num_labelled": 20}, evaluation={"seeds": [0]},
                      training={"epochs": 2, "early_stopping_patience": 0})
    from kdistill.data import prepare_data

    data = prepare_data(cfg.data, cfg.task)
    assert len(data.labelled_train) == 20 and data.report["labelled_train"] == 20
    assert {e.label for e in data.labelled_train} == {"negative", "positive"}
    teacher = load_member(cfg, data, cfg.teacher, progress=False)
    labelled_ids = {e.id for e in data.labelled_train}
    assert all(e.id in labelled_ids or e.text not in teacher.prefix for e in data.train)  # few-shot from labelled only
    logs = {}
    for variant in ("labels_only", "distilled"):
        folder = api.train(cfg, variant=variant, seed=0, progress=False)
        logs[variant] = json.loads(folder.with_name(folder.name + ".training.json").read_text())
    # the labels-only student sees only its 20 labelled examples, for exactly as many steps as the distilled one
    # (2 epochs of the whole training split; the rounded-up epochs of 20 examples would give more)
    assert logs["labels_only"]["steps"] == logs["distilled"]["steps"] == 2 * -(-len(data.train) // 8)
    # and is validated at the same steps, so early stopping weighs the same evidence for both
    validated = {v: [r["step"] for r in log["history"] if "val_macro_f1" in r] for v, log in logs.items()}
    assert validated["labels_only"] == validated["distilled"] == [-(-len(data.train) // 8), logs["distilled"]["steps"]]


def test_a_head_with_other_labels_is_refused(tmp_path, tiny_models, tiny_config):
    from transformers import AutoModelForSequenceClassification

    from kdistill.errors import KdistillError
    from kdistill.models import load_label_model

    head = AutoModelForSequenceClassification.from_pretrained(
        tiny_models["encoder"], num_labels=2, id2label={0: "positive", 1: "negative"},
        label2id={"positive": 0, "negative": 1})
    head.save_pretrained(tmp_path / "head")
    (tmp_path / "head").joinpath("tokenizer.json").write_bytes((tiny_models["encoder"] / "tokenizer.json").read_bytes())
    cfg = tiny_config()
    from dataclasses import replace

    with pytest.raises(KdistillError, match="reorder task.labels"):
        load_label_model(replace(cfg.student, model=str(tmp_path / "head")), cfg.task)


def test_hidden_and_balance_terms_run_through_the_pipeline(tiny_config):
    """Teacher hidden states are elicited once and stored; the projections are saved with the run,
    never inside the exported student."""
    cfg = tiny_config(objective={"hidden": {"weight": 0.5, "layers": "last-1"}, "balance": {"weight": 0.2}},
                      evaluation={"seeds": [0], "baselines": False})
    folder = api.train(cfg, variant="distilled", seed=0, progress=False)
    training = json.loads((folder.parent / f"{folder.name}.training.json").read_text())
    assert training["layer_pairs"] == {"lm": [[2, 2]]}
    assert any("train_hidden" in h and "train_balance" in h for h in training["history"])
    from safetensors.torch import load_file

    projection = load_file(folder.parent / f"{folder.name}.objective.safetensors")
    assert set(projection) == {"projections.0.0.weight", "projections.0.0.bias"}
    assert not any("projection" in k for k in load_file(folder / "model.safetensors"))
    from kdistill.cache import open_entry

    entries = [open_entry(p.parent) for p in (cfg.run_dir / "teacher_cache").glob("*/manifest.json")]
    assert sorted(e.kind for e in entries) == ["labels", "vectors"]
    hidden = next(e for e in entries if e.kind == "vectors")
    assert hidden.fields["layers"] == [2] and hidden.fields["pool"] == "last"
    assert hidden.vectors(hidden.ids()[:3]).shape == (3, *hidden.fields["shape"])
    api.train(cfg, variant="distilled", seed=0, progress=False)  # again: both come from the cache
    assert len(list((cfg.run_dir / "teacher_cache").glob("*/manifest.json"))) == 2


def test_hidden_term_against_two_teachers_through_the_pipeline(tiny_config, tiny_models):
    """Two in-process teachers (a causal LM and a fine-tuned encoder): each one's states are stored in its
    own entry, each gets its own projections, and the history logs each alignment."""
    cfg = tiny_config(teachers=[{"model": str(tiny_models["encoder"]), "name": "encoder-ft", "finetune": True,
                                 "finetune_epochs": 1}],
                      objective={"hidden": {"weight": 0.5, "layers": "last-1", "teachers": ["lm", "encoder-ft"]}},
                      evaluation={"seeds": [0], "baselines": False})
    folder = api.train(cfg, variant="distilled", seed=0, progress=False)
    training = json.loads((folder.parent / f"{folder.name}.training.json").read_text())
    assert training["layer_pairs"] == {"lm": [[2, 2]], "encoder-ft": [[2, 2]]}
    assert any("train_hidden:lm" in h and "train_hidden:encoder-ft" in h for h in training["history"])
    from safetensors.torch import load_file

    projection = load_file(folder.parent / f"{folder.name}.objective.safetensors")
    assert set(projection) == {f"projections.{k}.0.{p}" for k in (0, 1) for p in ("weight", "bias")}
    from kdistill.cache import open_entry

    vectors = [e for e in (open_entry(p.parent) for p in (cfg.run_dir / "teacher_cache").glob("*/manifest.json"))
               if e.kind == "vectors"]
    assert sorted(e.fields["pool"] for e in vectors) == ["last", "mean"]  # causal LM: last token; encoder: mean


def test_hidden_term_refuses_unknown_and_endpoint_teachers(tiny_config):
    with pytest.raises(KdistillError, match="not teachers of this run"):
        tiny_config(objective={"hidden": {"weight": 0.5, "teachers": ["nobody"]}})
    with pytest.raises(KdistillError, match="exposes no hidden states"):
        tiny_config(teacher={"model": "gemma-3-270m", "endpoint": {"base_url": "http://127.0.0.1:9/v1"}},
                    objective={"hidden": {"weight": 0.5}})


def test_ls_losses_lists_every_term_with_parameters():
    from kdistill.listing import listing

    text = listing("losses")
    for term in ("ce", "kd", "hidden", "balance"):
        assert f"\n  {term} " in text
    for parameter in ("divergence='forward_kl'", "temperature=2.0", "layers='uniform'", "target='prior'",
                      "kd.divergence: jsd", "schedule='constant'"):
        assert parameter in text


def test_ls_keeps_each_sections_descriptions_in_one_column():
    from kdistill.listing import listing

    lines = [line for line in listing("models").splitlines()[1:]]
    name = "qwen2.5-coder-1.5b-instruct"  # longer than the old fixed column of 20
    assert any(line.split()[0] == name for line in lines)
    starts = {len(line) - len(line[2:].split(maxsplit=1)[1]) for line in lines}  # where each description starts
    assert len(starts) == 1


def test_shrink_command_makes_a_student_that_trains(tiny_models, tiny_config, tmp_path, capsys):
    out = tmp_path / "shrunk"
    assert main(["shrink", str(tiny_models["lm"]), "--layers", "every-2", "--out", str(out)]) == 0
    assert "use it as `student: {model:" in capsys.readouterr().out
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).num_hidden_layers < AutoConfig.from_pretrained(tiny_models["lm"]).num_hidden_layers
    cfg = tiny_config(student={"model": str(out)}, evaluation={"seeds": [0], "baselines": False},
                      training={"epochs": 1})
    folder = api.train(cfg, variant="distilled", seed=0, progress=False)
    assert json.loads((folder / "kdistill.json").read_text())["kind"] == "causal_lm"
    assert main(["shrink", str(tiny_models["lm"]), "--layers", "every-0", "--out", str(tmp_path / "bad")]) == 2


def test_an_unset_learning_rate_is_the_students_own_default(tiny_config, tiny_models):
    """Issue 23: 5e-5 left a MiniLM classifier undertrained and collapsing; an encoder student now starts at 2e-4
    unless the config says otherwise, and a causal LM keeps 5e-5."""
    from dataclasses import replace

    from kdistill.data import prepare_data
    from kdistill.losses.objective import Objective
    from kdistill.models import load_label_model
    from kdistill.train.loop import Trainer

    cfg = tiny_config(training={"learning_rate": None})
    data = prepare_data(cfg.data, cfg.task)
    peaks = {}
    for kind, path in (("encoder", tiny_models["encoder"]), ("causal_lm", tiny_models["lm"])):
        student = load_label_model(replace(cfg.student, model=str(path)), cfg.task)
        trainer = Trainer(student, train_examples=data.train, val_examples=data.validation,
                          objective=Objective(cfg.objective.labels_only()), cfg=cfg.training, seed=0,
                          checkpoint_dir=cfg.run_dir / kind, progress=False)
        peaks[kind] = trainer.optimizer.param_groups[0]["initial_lr"]
    assert peaks == {"encoder": 2e-4, "causal_lm": 5e-5}
    explicit = Trainer(student, train_examples=data.train, val_examples=data.validation,
                       objective=Objective(cfg.objective.labels_only()), cfg=replace(cfg.training, learning_rate=1e-3),
                       seed=0, checkpoint_dir=cfg.run_dir / "explicit", progress=False)
    assert explicit.optimizer.param_groups[0]["initial_lr"] == 1e-3
