"""`kdistill export`: a run's student -> an ONNX (fp32 or int8) folder, written only if it passes parity.

    export_student(run_dir, fmt="onnx-int8")  -> the export folder (default <run>/exports/<fmt>/)

Stages: the graph is traced and optimised in a scratch folder (int8: then quantised from it); the folder gets
the student's config and tokenizer files; the parity check runs the folder as `kdistill predict` would,
against the PyTorch student, on the validation split; only then are export.json and checksums.json written
and the folder renamed into place. A failed check raises one sentence and leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kdistill.checksums import CHECKSUMS, verify_student, write_checksums
from kdistill.config import RunConfig, load_config
from kdistill.errors import KdistillError
from kdistill.export.folder import FORMATS, GRAPH, load_export
from kdistill.export.graph import causal_lm_graph, encoder_graph, optimize_encoder, quantize_int8
from kdistill.export.parity import Thresholds, generation_parity, label_parity
from kdistill.io import atomic_dir, atomic_write_json
from kdistill.rundir import RunDir

_NOT_COPIED = {"kdistill.json", CHECKSUMS}  # written anew; the weights are the graph's now


def run_config(run_dir: str | Path) -> RunConfig:
    """The config a run directory ran with, pointed at that directory wherever it now lies."""
    run = RunDir(Path(run_dir))
    if not run.config.is_file():
        raise KdistillError(f"{run.root}: no config.yaml here; give a run directory that `kdistill run` wrote "
                            "(runs/<name>).")
    return load_config(run.config, {"output_dir": str(run.root.parent), "name": run.root.name})


def export_student(run_dir: str | Path, *, fmt: str = "onnx-int8", out: str | Path | None = None,
                   thresholds: Thresholds | None = None, parity_examples: int | None = None) -> Path:
    """Export the run's student (runs/<name>/student) as ``fmt``; returns the folder written."""
    if fmt not in FORMATS:
        raise KdistillError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}.")
    cfg = run_config(run_dir)
    student = cfg.paths.exported_student
    if not (student / "kdistill.json").is_file():
        raise KdistillError(f"{student}: no saved student here yet; `kdistill run` saves it when the students are "
                            "trained.")
    verify_student(student)
    meta = json.loads((student / "kdistill.json").read_text(encoding="utf-8"))
    out = Path(out) if out is not None else cfg.paths.exports(fmt)
    thresholds = thresholds or Thresholds.for_format(fmt)
    with tempfile.TemporaryDirectory(prefix=".kdistill-export-") as scratch, atomic_dir(out) as tmp:
        _write_graph(student, meta, fmt, tmp, Path(scratch))
        _copy_configs(student, tmp)
        atomic_write_json(tmp / "kdistill.json", {**meta, **_task_meta(cfg, meta), "checksums": CHECKSUMS,
                                                  "export": {"format": fmt, "source": str(student), "graph": GRAPH}})
        parity = _parity(cfg, student, meta, tmp, parity_examples)
        failed = thresholds.failures(parity)
        if failed:  # the atomic folder is dropped: nothing is written
            raise KdistillError(f"export refused: the {fmt} student misses parity on {parity['examples']} validation "
                                f"texts: {'; '.join(failed)}; nothing was written (loosen the named flag to accept it).")
        limits = {k: v if v is None or math.isfinite(v) else None for k, v in thresholds.__dict__.items()}
        atomic_write_json(tmp / "export.json", {"format": fmt, "parity": parity, "thresholds": limits})
        write_checksums(tmp)
    return out


def _write_graph(student: Path, meta: dict[str, Any], fmt: str, folder: Path, scratch: Path) -> None:
    """model.onnx in ``folder``: traced (and optimised) in ``scratch``, then moved or quantised from there."""
    fp32 = scratch / GRAPH
    if meta["kind"] == "encoder":
        from kdistill.models import load_saved

        model = load_saved(student)
        encoder_graph(model.module, model.tokenizer, fp32)
        optimize_encoder(fp32, model.module.config)
    elif meta["kind"] == "causal_lm_generator":
        import torch
        from transformers import AutoModelForCausalLM

        causal_lm_graph(AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32), fp32)
    else:
        raise KdistillError(f"{student}: a {meta['kind']} student cannot be exported yet; `kdistill export` takes "
                            "encoder classifiers and generation (causal LM) students.")
    if fmt == "onnx-int8":
        quantize_int8(fp32, folder / GRAPH, weight_only=meta["kind"] == "causal_lm_generator")
    else:
        for part in scratch.glob(GRAPH + "*"):  # the graph and, past 2 GB, its weights file
            shutil.move(part, folder / part.name)


def _task_meta(cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What `kdistill predict` needs to prompt a generation student as the run did (a label student's
    kdistill.json already holds its labels and input template)."""
    if meta["kind"] != "causal_lm_generator":
        return {}
    return {"task": {"prompt_template": cfg.task.prompt_template, "max_new_tokens": cfg.task.max_new_tokens,
                     "max_length": cfg.student.max_length, "stop": list(cfg.task.stop)}}


def _copy_configs(student: Path, folder: Path) -> None:
    """The student's 🤗 config, generation config and tokenizer files, byte for byte."""
    for path in student.iterdir():
        if path.is_file() and path.suffix not in {".safetensors", ".bin"} and path.name not in _NOT_COPIED:
            shutil.copy2(path, folder / path.name)


def _parity(cfg: RunConfig, student: Path, meta: dict[str, Any], folder: Path,
            parity_examples: int | None) -> dict[str, Any]:
    """The export folder against the PyTorch student on the validation split (its first ``parity_examples``)."""
    if meta["kind"] == "encoder":
        from kdistill.data.prepare import prepare_data
        from kdistill.models import load_saved

        examples = prepare_data(cfg.data, cfg.task).validation[:parity_examples]
        return label_parity(load_saved(student), load_export(folder, verify=False), examples, meta["labels"],
                            batch_size=cfg.student.batch_size)
    return _generation_parity(cfg, student, folder, parity_examples)


def _generation_parity(cfg: RunConfig, student: Path, folder: Path, parity_examples: int | None) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.models.generate import greedy_texts

    examples = prepare_generation(cfg.data, cfg.task).validation[:parity_examples]
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in examples]
    # the teacher's written references are in its cache, not in the data: quality is then the test's (measure)
    references = [e.target for e in examples] if cfg.task.targets != "teacher" else None
    tokenizer = AutoTokenizer.from_pretrained(student)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    module = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    generate = lambda model, tok, texts: greedy_texts(
        model, tok, texts, max_new_tokens=cfg.task.max_new_tokens, max_length=cfg.student.max_length,
        batch_size=cfg.student.batch_size, stop=cfg.task.stop)
    return generation_parity((module, tokenizer), load_export(folder, verify=False), prompts, references,
                             generate=generate)
