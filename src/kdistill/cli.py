"""The `kdistill` command: a thin table of sub-commands over the plain functions of kdistill.api.

It is also the boundary where every failure becomes one line on stderr and a non-zero exit: a user error
(KdistillError, exit 2), a fault of the machine such as a full disk (OSError, exit 2, naming the path),
and, should one remain, a bug of kdistill (exit 1). `--debug` or KDISTILL_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, NoReturn

import yaml

from kdistill.errors import KdistillError, describe_os_error


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise KdistillError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set training.epochs=2.")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise KdistillError(f"--set {pair!r}: the value {value!r} is not valid YAML ({problem}); write a list as "
                                "[1, 2], and quote a text that holds [ ] { } : or #.") from None
    return out


def _config(args: argparse.Namespace):
    from kdistill.config import load_config

    return load_config(args.config, _overrides(args.set))


def cmd_run(args):
    from kdistill import api
    run_dir = api.run(_config(args), resume=args.resume)
    print(f"done: {run_dir}/report.md, {run_dir}/eval/results.json, student in {run_dir}/student")


def cmd_elicit(args):
    from kdistill import api

    print(api.elicit(_config(args)).where())


def cmd_train(args):
    from kdistill import api
    print(api.train(_config(args), variant=args.variant, seed=args.seed, resume=args.resume))


def cmd_search(args):
    from kdistill.recipes.search import search

    out = search(_config(args), trials=args.trials)
    print(f"done: {out}/results.md, {out}/results.json; best config in {out}/best.yaml "
          f"(`kdistill run {out}/best.yaml` runs it)")


def cmd_eval(args):
    from kdistill import api
    print(api.evaluate(_config(args)))


def cmd_report(args):
    from kdistill import api
    print(api.report(_config(args)))


def cmd_predict(args):
    from kdistill import api
    texts = list(args.text)
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            texts += [line.strip() for line in f if line.strip()]
    if not texts:
        raise KdistillError("predict: give texts as arguments or --file FILE (one text per line).")
    for row in api.predict(args.model_dir, texts):
        print(json.dumps(row, ensure_ascii=False))


def cmd_export(args):
    from kdistill import api

    folder = api.export(args.run_dir, fmt=args.format, out=args.out, measure=not args.no_measure,
                        parity_examples=args.parity_examples, min_agreement=args.min_agreement,
                        max_quality_drop=args.max_quality_drop, max_logit_diff=args.max_logit_diff)
    parity = json.loads((folder / "export.json").read_text(encoding="utf-8"))["parity"]
    drop = parity.get("quality_drop")
    print(f"done: {folder} ({args.format}); parity on {parity['examples']} validation texts: agreement "
          f"{parity['agreement']:.3f}, {parity['quality_metric']} drop "
          f"{'n/a' if drop is None else f'{drop:+.4f}'}, max logit difference {parity['max_logit_diff']:.2g}"
          + ("" if args.no_measure else f"; measured into {args.run_dir}/eval/exports.json and the report card"))


def cmd_validate(args):
    from kdistill import api
    print(api.validate(_config(args), check_models=not args.no_models))


def cmd_cache(args):
    from kdistill.cache import cache_export, cache_info, cache_verify

    if args.action == "info":
        print(cache_info(args.path))
    elif args.action == "verify":
        ok, text = cache_verify(args.path)
        print(text)
        if not ok and args.repair:
            ok = _repair_cache(args.path, args.config)
        if not ok:
            raise KdistillError(f"{args.path}: damaged or incomplete entries (above); `kdistill cache verify "
                                f"{args.path} --repair` asks the teacher again for exactly the damaged shards.")
    else:
        if not args.out:
            raise KdistillError("cache export: give --out FILE.jsonl.")
        print(f"{cache_export(args.path, args.out)} examples written to {args.out}")


def _repair_cache(path: str, config: str | None) -> bool:
    """Delete the damaged shards, then elicit with the run's config (the cache's own run directory's, unless
    --config names one): only those shards are asked again. True if the cache then verifies."""
    from kdistill import api
    from kdistill.cache import cache_repair, cache_verify
    from kdistill.config import load_config
    from kdistill.rundir import RunDir

    removed = cache_repair(path)
    run = RunDir.of_teacher_cache(path)
    if config is None and (run is None or not run.config.exists()):
        raise KdistillError(f"removed {len(removed)} damaged shards ({', '.join(removed) or 'none'}); this cache is not "
                            "inside a run directory, so give the run's config with --config to ask for them again.")
    where = {} if config is not None else {"output_dir": str(run.root.parent), "name": run.root.name}
    api.elicit(load_config(config or run.config, where), progress=False)
    ok, text = cache_verify(path)
    print(f"repaired: {len(removed)} damaged shards asked again ({', '.join(removed) or 'none'})\n{text}")
    return ok


def cmd_shrink(args):
    from kdistill.train.student_init import shrink_model

    out = shrink_model(args.model, args.layers, args.out, trust_remote_code=args.trust_remote_code)
    record = json.loads((out / "kdistill_init.json").read_text(encoding="utf-8"))
    print(f"{out}: layers {record['source_layers_kept']} of {record['source_num_layers']}, "
          f"{record['num_parameters'] / 1e6:,.1f} M parameters (from {record['source_num_parameters'] / 1e6:,.1f} M); "
          f"use it as `student: {{model: {out}}}`")


def cmd_ls(args):
    from kdistill.listing import listing

    print(listing(args.what))


COMMANDS: dict[str, tuple[Callable, str]] = {
    "run": (cmd_run, "the whole run: data, teacher, students (every variant and seed), evaluation, report"),
    "elicit": (cmd_elicit, "ask every teacher once and keep its answers in the run's teacher cache (label "
                           "distributions; for generation, token rows and written targets); resumes after an "
                           "interruption"),
    "train": (cmd_train, "train one student variant with one seed"),
    "search": (cmd_search, "search the distilled student's hyper-parameters with optuna on a subsample (the config's "
                           "`search` section); resumes after a kill; writes search/results.md and best.yaml"),
    "eval": (cmd_eval, "score teacher and students on the test split, with cost; writes eval/results.json"),
    "report": (cmd_report, "render report.md and report.html from eval/results.json (a config with stages: every "
                           "stage's, then the combined ones)"),
    "predict": (cmd_predict, "label new texts with a saved student or its export"),
    "export": (cmd_export, "export a run's student as ONNX (fp32 or int8), written only if it passes a parity check "
                           "against the PyTorch student; measures both for the report card"),
    "validate": (cmd_validate, "check a config, its data and the verbalizers; writes nothing"),
    "cache": (cmd_cache, "inspect, verify or export a teacher cache (runs/NAME/teacher_cache or one entry)"),
    "shrink": (cmd_shrink, "make a shallower student from a subset of a model's layers (DistilBERT-style init)"),
    "ls": (cmd_ls, "list built-in tasks, configs, models, data, losses and teacher sources"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as the one line every other error is (not a usage block and then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"kdistill: error: {self.prog}: {message}; see `{self.prog} --help`.\n")


def _add_export_arguments(export: argparse.ArgumentParser) -> None:
    """`kdistill export`: the format and the parity check's limits."""
    export.add_argument("run_dir", help="a run directory with a saved student, e.g. runs/default")
    export.add_argument("--format", required=True, choices=["onnx", "onnx-int8"],
                        help="onnx: fp32 weights; onnx-int8: int8 weights (dynamic quantisation)")
    export.add_argument("--out", default=None, help="folder to write (default: RUN_DIR/exports/FORMAT; replaced "
                                                    "atomically)")
    export.add_argument("--min-agreement", type=float, default=None,
                        help="least share of validation texts with the PyTorch student's label (generation: the same "
                             "output); default 0.99 for onnx, 0.95 for onnx-int8")
    export.add_argument("--max-quality-drop", type=float, default=None,
                        help="largest fall of validation macro-F1 (ROUGE-L) below the PyTorch student's, as a "
                             "fraction; default 0.005 for onnx, 0.01 for onnx-int8")
    export.add_argument("--max-logit-diff", type=float, default=None,
                        help="largest |logit difference|; default 0.01 for onnx, unchecked for onnx-int8")
    export.add_argument("--parity-examples", type=int, default=None,
                        help="check parity on the first N validation texts (default: all)")
    export.add_argument("--no-measure", action="store_true",
                        help="skip timing and test scoring (eval/exports.json and the card are left as they are)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdistill", description="Task-specific knowledge distillation with a report card.",
                     allow_abbrev=False)  # `--resum` is a typo, not --resume
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also KDISTILL_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.set_defaults(func=func)
        # also after the command (`kdistill run x.yaml --debug`); SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        if name in {"run", "elicit", "train", "search", "eval", "report", "validate"}:
            p.add_argument("config", nargs="?", default=None,
                           help="run config YAML (default: the built-in default job, see `kdistill ls configs`)")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a config field, e.g. --set training.epochs=2 (repeatable)")
    sub.choices["run"].add_argument("--resume", action="store_true", help="continue interrupted training from checkpoints")
    train = sub.choices["train"]
    train.add_argument("--variant", default="distilled", choices=["distilled", "labels_only"], help="which student")
    train.add_argument("--seed", type=int, default=None, help="seed (default: the first of evaluation.seeds)")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    sub.choices["search"].add_argument("--trials", type=int, default=None,
                                       help="trials to finish in all (default: search.trials); a resumed search runs "
                                            "only the missing ones")
    predict = sub.choices["predict"]
    predict.add_argument("model_dir", help="a saved student folder, e.g. runs/default/student, or an export of it "
                                           "(runs/default/exports/onnx-int8)")
    predict.add_argument("text", nargs="*", help="texts to label")
    predict.add_argument("--file", help="a file with one text per line")
    _add_export_arguments(sub.choices["export"])
    cache = sub.choices["cache"]
    cache.add_argument("action", choices=["info", "verify", "export"])
    cache.add_argument("path", help="a teacher cache folder (runs/NAME/teacher_cache) or one entry in it")
    cache.add_argument("--out", help="export: the JSONL file to write (one example per line)")
    cache.add_argument("--repair", action="store_true",
                       help="verify: delete the damaged shards and ask the teacher again for exactly those")
    cache.add_argument("--config", help="verify --repair: the run config to elicit with (default: the config.yaml "
                                        "of the run directory the cache is in)")
    shrink = sub.choices["shrink"]
    shrink.add_argument("model", help="the model to copy layers from: built-in name, local folder or hub id")
    shrink.add_argument("--layers", required=True,
                        help="every-K (0, K, 2K, ...), uniform-N (N evenly spread, first to last) or indices 0,5,11")
    shrink.add_argument("--out", required=True, help="folder to write (replaced atomically)")
    shrink.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with a hub model to run")
    sub.choices["validate"].add_argument("--no-models", action="store_true", help="check config and data only")
    sub.choices["ls"].add_argument("what", nargs="?", default="all",
                                   choices=["all", "tasks", "configs", "models", "data", "losses", "teachers"])
    return parser


def _again(command: str) -> str:
    """How to carry on after the cause of a failure is fixed."""
    if command in ("run", "train"):
        return f"then run `kdistill {command}` again with --resume (nothing done so far is lost)"
    if command in ("elicit", "search"):
        return f"then run `kdistill {command}` again (it continues where it stopped)"
    return f"then run `kdistill {command}` again"


def _close_progress_bars() -> None:
    """End the progress bars a failure left open, so that the error starts a line of its own and no bar is
    drawn after it."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _quiet_weight_loading() -> None:
    """transformers draws a "Loading weights" bar for every model it loads (30 in one default job), which buries
    kdistill's own bars; they say what the run is doing. Downloads from a hub keep their bars: they can be long."""
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # also turns the hub's bars off ...
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
        huggingface_hub.utils.enable_progress_bars()  # ... so they come back, unless the user turned them off


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # unknown flags are errors
    debug = args.debug or os.environ.get("KDISTILL_DEBUG", "") not in ("", "0")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        _quiet_weight_loading()
    try:
        args.func(args)
    except KeyboardInterrupt:
        hint = ("the same command resumes the search" if args.command == "search"
                else "`--resume` continues from the last checkpoint")
        print(f"kdistill: interrupted; {hint}", file=sys.stderr)
        return 130
    except Exception as err:  # the one place a failure becomes one line (the traceback only on request)
        _close_progress_bars()
        if debug:
            traceback.print_exc()
        if isinstance(err, KdistillError):
            line, code = f"kdistill: error: {_one_line(err)}", 2
        elif isinstance(err, OSError) and err.errno is None:  # a library's sentence (transformers: no such model)
            line, code = f"kdistill: error: {_one_line(err)}", 2
        elif isinstance(err, OSError):
            where, fix = describe_os_error(err)
            line, code = f"kdistill: error: {where}; {fix}, {_again(args.command)}.", 2
        else:
            line, code = (f"kdistill: internal error: {type(err).__name__}: {_one_line(err)[:300]}; this is a bug in "
                          "kdistill: run the command again with --debug for the traceback, and report it."), 1
        print(line, file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
