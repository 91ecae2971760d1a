"""`kdistill export`: the ONNX folders of an encoder and a causal-LM student agree with the PyTorch student,
a failed parity check writes nothing, and `kdistill predict` and plain onnxruntime read the folder alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_config_dict

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = ["the film was great and moving", "a dull boring plot", "really quite superb acting",
         "the story is tedious and bland and the acting is painful"]


def _label_run(tmp_path, tiny_models, **sections):
    """A run directory whose student is saved (an untrained head: parity does not need a trained one)."""
    from kdistill.config import RunConfig, dump_yaml, from_dict
    from kdistill.io import atomic_write_text
    from kdistill.models import load_label_model

    cfg = from_dict(RunConfig, tiny_config_dict(tmp_path, tiny_models, **sections))
    atomic_write_text(cfg.paths.config, dump_yaml(cfg))
    torch.manual_seed(0)
    load_label_model(cfg.student, cfg.task).save(cfg.paths.exported_student)
    return cfg


def _gen_run(tmp_path, tiny_models):
    from kdistill.config import RunConfig, dump_yaml, from_dict
    from kdistill.io import atomic_write_text
    from kdistill.models.generative import GenStudent, load_causal_lm
    from test_gen_pipeline import _gen_config_dict

    cfg = from_dict(RunConfig, _gen_config_dict(tmp_path, tiny_models, task={"max_new_tokens": 6}))
    atomic_write_text(cfg.paths.config, dump_yaml(cfg))
    module, tokenizer = load_causal_lm(cfg.student, torch.device("cpu"))
    GenStudent(module, tokenizer, max_length=cfg.student.max_length).save(cfg.paths.exported_student)
    return cfg


def test_an_encoder_export_loads_alone_and_predicts_what_the_pytorch_student_predicts(tmp_path, tiny_models):
    from kdistill import api
    from kdistill.checksums import damage

    cfg = _label_run(tmp_path, tiny_models)
    folder = api.export(cfg.run_dir, fmt="onnx", measure=False)
    assert folder == cfg.run_dir / "exports" / "onnx" and damage(folder) is None
    assert not list(folder.glob("*.safetensors")) and len(list(folder.glob("*.onnx"))) == 1
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["agreement"] == 1.0 and parity["max_logit_diff"] < 1e-4 and parity["quality_drop"] == 0.0
    torch_rows, onnx_rows = api.predict(cfg.paths.exported_student, TEXTS), api.predict(folder, TEXTS)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(torch_rows, onnx_rows):
        assert a.keys() == b.keys() and all(abs(a["probabilities"][k] - b["probabilities"][k]) <= 2e-4
                                            for k in a["probabilities"])


def test_plain_onnxruntime_and_the_folders_own_tokenizer_and_config_agree_with_kdistill_predict(tmp_path,
                                                                                                 tiny_models):
    """What Optimum's ORTModelForSequenceClassification does (the only .onnx file, the config's id2label, the
    tokenizer cutting at its model_max_length), done by hand with no kdistill code: the same labels. Optimum
    itself (optimum-onnx needs transformers < 4.58) is checked in a second environment by
    benchmarks/export_optimum.py."""
    import onnxruntime as ort
    from transformers import AutoConfig, AutoTokenizer

    from kdistill import api

    cfg = _label_run(tmp_path, tiny_models)
    folder = api.export(cfg.run_dir, fmt="onnx", measure=False)
    (graph,) = folder.glob("*.onnx")
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    long_text = " ".join(TEXTS * 4)  # past the student's 32 tokens: the tokenizer must cut where training did
    assert tokenizer.model_max_length == cfg.student.max_length
    batch = tokenizer(TEXTS + [long_text], return_tensors="np", padding=True, truncation=True)
    names = [i.name for i in session.get_inputs()]
    logits = session.run(["logits"], {n: batch[n].astype(np.int64) for n in names})[0]
    plain = [config.id2label[int(i)] for i in logits.argmax(-1)]
    assert plain == [row["label"] for row in api.predict(folder, TEXTS + [long_text])]


def test_an_int8_export_quantizes_the_weights_and_keeps_the_labels_of_a_trained_head(tmp_path, tiny_models):
    import onnx

    from kdistill import api

    cfg = _label_run(tmp_path, tiny_models)
    # a random head puts every logit near 0, where int8 noise decides: the limit is loosened on purpose here
    folder = api.export(cfg.run_dir, fmt="onnx-int8", measure=False, min_agreement=0.0, max_quality_drop=1.0)
    graph = onnx.load(str(folder / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer)
    assert (folder / "model.onnx").stat().st_size < 0.6 * (cfg.run_dir / "student" / "model.safetensors").stat().st_size
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert 0.0 <= parity["agreement"] <= 1.0 and parity["max_logit_diff"] > 0
    assert [r["label"] for r in api.predict(folder, TEXTS)] == [r["label"] for r in api.predict(folder, TEXTS)]


def test_an_export_that_misses_parity_is_refused_in_one_line_and_nothing_is_written(tmp_path, tiny_models, capsys):
    from kdistill.cli import main

    cfg = _label_run(tmp_path, tiny_models)
    code = main(["export", str(cfg.run_dir), "--format", "onnx", "--max-logit-diff", "0", "--no-measure"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars
    assert code == 2 and err.startswith("kdistill: error: export refused")
    assert "export refused" in err and "--max-logit-diff" in err and "nothing was written" in err
    exports = cfg.run_dir / "exports"
    assert not exports.exists() or list(exports.iterdir()) == []  # no folder, no temporary one left behind


def test_export_of_a_folder_that_is_not_a_run_is_one_clear_line(tmp_path, capsys):
    from kdistill.cli import main

    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "no config.yaml here" in capsys.readouterr().err


def test_a_causal_lm_export_with_its_cache_writes_what_pytorch_writes(tmp_path, tiny_models):
    """Greedy generation through the graph's KV cache, batched with left padding, equals transformers' own."""
    from kdistill import api
    from kdistill.export import load_export
    from kdistill.models.generate import greedy_texts
    from kdistill.models.generative import load_causal_lm

    cfg = _gen_run(tmp_path, tiny_models)
    folder = api.export(cfg.run_dir, fmt="onnx", measure=False)
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["agreement"] == 1.0 and parity["max_logit_diff"] < 1e-4 and parity["quality_drop"] == 0.0
    prompts = [t + " Answer:" for t in TEXTS]  # of different lengths: a left-padded batch
    settings = dict(max_new_tokens=8, max_length=cfg.student.max_length, batch_size=4, stop=())
    module, tokenizer = load_causal_lm(cfg.student, torch.device("cpu"))
    assert greedy_texts(*load_export(folder), prompts, **settings) == greedy_texts(module, tokenizer, prompts,
                                                                                    **settings)
    rows = api.predict(folder, TEXTS[:2])
    assert [r["text"] for r in rows] == TEXTS[:2] and all(isinstance(r["output"], str) for r in rows)


def test_measuring_an_export_puts_its_row_beside_the_pytorch_one_on_the_card(tmp_path, tiny_models):
    from kdistill import api
    from kdistill.export.student import run_config

    cfg = _label_run(tmp_path, tiny_models)
    api.export(cfg.run_dir, fmt="onnx")
    record = json.loads(cfg.paths.export_measurements.read_text())["onnx"]
    assert set(record["rows"]) == {"pytorch", "onnx_fp32"} and record["test_agreement"] == 1.0
    pytorch, onnx_row = record["rows"]["pytorch"], record["rows"]["onnx_fp32"]
    assert pytorch["quality"] == onnx_row["quality"]
    for row in (pytorch, onnx_row):
        assert row["p50_ms_batch1"] <= row["p95_ms_batch1"] and row["per_s_batch32"] > 0 and row["size_mb"] > 0
    from kdistill.report.exports import export_lines

    lines = "\n".join(export_lines(json.loads(cfg.paths.export_measurements.read_text()), None))
    assert "ONNX fp32" in lines and "PyTorch fp32" in lines
    assert run_config(cfg.run_dir).run_dir == cfg.run_dir


def test_thresholds_keep_a_formats_defaults_unless_a_flag_is_given():
    from kdistill.export import Thresholds

    fp32, int8 = Thresholds.for_format("onnx"), Thresholds.for_format("onnx-int8", min_agreement=0.9)
    assert fp32.max_logit_diff is not None and int8.max_logit_diff is None and int8.min_agreement == 0.9
    good = {"agreement": 1.0, "quality_drop": 0.0, "quality_metric": "macro_f1", "max_logit_diff": 0.0}
    assert fp32.failures(good) == [] and int8.failures({**good, "max_logit_diff": 5.0}) == []
    bad = fp32.failures({**good, "agreement": 0.5, "quality_drop": 0.2, "max_logit_diff": 1.0})
    assert [phrase.split("(")[-1] for phrase in bad] == ["--min-agreement)", "--max-quality-drop)",
                                                          "--max-logit-diff)"]
    assert fp32.failures({**good, "quality_drop": None}) == []  # no references: nothing to judge


def test_the_card_shows_every_form_with_its_speed_up_against_the_pytorch_timing_of_its_own_call():
    from kdistill.report.exports import export_html, export_lines

    row = lambda p50, quality: {"quality": quality, "quality_metric": "macro_f1", "p50_ms_batch1": p50,
                                "p95_ms_batch1": p50 * 1.2, "per_s_batch32": 1000 / p50, "size_mb": 10.0}
    measurements = {
        "onnx": {"measured_at": "2026-01-01T00:00:00Z", "test_agreement": 1.0,
                 "rows": {"pytorch": row(10.0, 0.73), "onnx_fp32": row(5.0, 0.73)}},
        "onnx-int8": {"measured_at": "2026-01-01T00:01:00Z", "test_agreement": 0.99,
                      "rows": {"pytorch": row(12.0, 0.73), "onnx_int8": row(4.0, 0.72)}}}
    results = {"models": {"teacher": {"metrics": {"macro_f1": 0.75}, "cost": {
        "latency_p50_ms": 200.0, "latency_p95_ms": 250.0, "throughput_examples_per_s": 9.0,
        "throughput_batch_size": 32, "size_on_disk_bytes": 1_000_000_000}}}}
    table = [line for line in export_lines(measurements, results) if line.startswith("| ")][1:]
    assert [line.split(" | ")[0].strip("| ") for line in table] == [
        "PyTorch fp32 (the student)", "ONNX fp32", "ONNX int8", "teacher (the run's evaluation)"]
    assert table[0].endswith("| 12.0 | 14.4 | 83.3 ex/s (batch 32) | 1.00× |")  # the latest call's PyTorch row
    assert table[1].endswith("2.00× |") and table[2].endswith("3.00× |")  # each against its own call
    assert "<h2>Deployable forms</h2>" in export_html(measurements, results)


def test_a_causal_lm_int8_export_keeps_activations_in_fp32_and_stays_close(tmp_path, tiny_models):
    """Weight-only int8 (MatMulNBits blocks) for causal LMs: the next-token logits stay close to fp32's."""
    import onnx

    from kdistill import api

    cfg = _gen_run(tmp_path, tiny_models)
    folder = api.export(cfg.run_dir, fmt="onnx-int8", measure=False, max_logit_diff=0.05)
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "DynamicQuantizeLinear" not in ops  # (MatMuls of two activations remain)
    parity = json.loads((folder / "export.json").read_text())["parity"]
    assert parity["max_logit_diff"] < 0.05 and parity["agreement"] >= 0.95
    assert all(isinstance(r["output"], str) for r in api.predict(folder, TEXTS[:2]))
