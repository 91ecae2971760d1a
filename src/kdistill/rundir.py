"""The run directory `<output_dir>/<name>/`: the one place that knows where each thing of a run lives.

    config.yaml                          the resolved config that ran
    data/splits.json                     which example ids went to train / validation / test
    teacher_cache/                       the teacher's answers (kdistill.cache), fine-tuned teachers, endpoint journals
    teacher_calls.json                   what asking the teachers cost this run: calls, prompt tokens, seconds
    selection/rounds.json                with teacher.budget: the pool texts each selection round chose
    selection/checkpoints/round-<r>/     resumable training state of a selection round's student
    checkpoints/<variant>-seed<s>/       resumable training state of each student
    students/<variant>-seed<s>/          each trained student (a plain 🤗 folder) ...
    students/<variant>-seed<s>.*.json    ... and its training record (and objective / optimizer state)
    tensorboard/<variant>-seed<s>/       training curves, when training.tensorboard is on
    eval/results.json, eval/outputs.jsonl  every figure of the card; every generated output
    report.md, report.html, plots/       the report card
    student/                             the exported student: the best seed, chosen on validation
    exports/<format>/                    `kdistill export`: the student as ONNX (onnx, onnx-int8), parity-checked
    eval/exports.json                    each export's cost and test quality, timed beside the PyTorch student
    stages/<i>-<name>/                   a multi-stage run's stages, each a run directory of its own
    search/                              `kdistill search`'s trials and study
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory; nothing here touches the disk."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits(self) -> Path:
        return self.root / "data" / "splits.json"

    @property
    def teacher_cache(self) -> Path:
        return self.root / "teacher_cache"

    @staticmethod
    def of_teacher_cache(path: str | Path) -> "RunDir | None":
        """The run directory whose teacher cache is ``path`` or holds the entry ``path``, by the names alone."""
        path = Path(path).absolute()
        for root in (path.parent, path.parent.parent):
            if RunDir(root).teacher_cache in (path, path.parent):
                return RunDir(root)
        return None

    def finetuned_teacher(self, name: str, key: str) -> Path:
        """A teacher kdistill fine-tuned, keyed by what determined it."""
        return self.finetuned_teachers / f"{name}-{key[:16]}"

    @property
    def finetuned_teachers(self) -> Path:
        return self.teacher_cache / "finetuned"

    def endpoint_journal(self, name: str) -> Path:
        return self.teacher_cache / "endpoint-journals" / f"{name}.jsonl"

    def elicitation_speed(self, name: str) -> Path:
        return self.teacher_cache / f"last_elicitation-{name}.json"

    @property
    def teacher_calls(self) -> Path:
        """The run's own record of its teachers' calls (not in the teacher cache, which runs may share)."""
        return self.root / "teacher_calls.json"

    @property
    def selection_rounds(self) -> Path:
        return self.root / "selection" / "rounds.json"

    def selection_checkpoints(self, round_number: int | None = None) -> Path:
        """A selection round's student's checkpoints; without a round, the folder of them all."""
        folder = self.root / "selection" / "checkpoints"
        return folder if round_number is None else folder / f"round-{round_number}"

    @staticmethod
    def run_name(variant: str, seed: int | str) -> str:
        return f"{variant}-seed{seed}"

    def student(self, variant: str, seed: int | str) -> Path:
        return self.root / "students" / self.run_name(variant, seed)

    def training_record(self, variant: str, seed: int | str) -> Path:
        return self.beside(self.student(variant, seed), "training.json")

    @staticmethod
    def beside(student: Path, what: str) -> Path:
        """A file kept next to a saved student folder: its training record, objective or optimizer state."""
        return student.parent / f"{student.name}.{what}"

    def checkpoints(self, variant: str, seed: int | str) -> Path:
        return self.all_checkpoints / self.run_name(variant, seed)

    @property
    def all_checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def written_atomically(self) -> list[Path]:
        """The folders whose files and sub-folders a run replaces atomically, where a kill can leave a
        `.<name>.<random>.tmp` behind (besides each `checkpoints(...)` folder). Not the teacher cache: runs
        may share it, and it cleans up after itself under its writer's lock."""
        return [self.root, self.splits.parent, self.results.parent, self.root / "students", self.plots,
                self.all_checkpoints, self.selection_rounds.parent, self.root / "exports"]

    def tensorboard(self, variant: str, seed: int | str) -> Path:
        return self.root / "tensorboard" / self.run_name(variant, seed)

    @property
    def results(self) -> Path:
        return self.root / "eval" / "results.json"

    @property
    def outputs(self) -> Path:
        return self.root / "eval" / "outputs.jsonl"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def exported_student(self) -> Path:
        return self.root / "student"

    def exports(self, fmt: str) -> Path:
        """Where `kdistill export --format <fmt>` writes the student unless told otherwise."""
        return self.root / "exports" / fmt

    @property
    def export_measurements(self) -> Path:
        """Each export's measured cost and quality beside the PyTorch student's, for the card."""
        return self.root / "eval" / "exports.json"

    def stage(self, number: int, name: str) -> Path:
        """Where stage ``number`` (from 1) runs: inside the run's own directory, wherever that now lies."""
        return self.root / "stages" / f"{number}-{name}"

    @property
    def search(self) -> Path:
        return self.root / "search"
