"""The task family's recipe, chosen once from the task's kind: the one place that knows which kinds exist.

A recipe is a module with the same plain functions, each taking a RunConfig of one run:

    validate(cfg, check_models=)   elicit(cfg, progress=, teachers=)   variants(cfg)
    train(cfg, variant=, seed=, resume=, progress=, on_record=, ...)    evaluate(cfg, progress=, teachers=)
    report(cfg)                    run(cfg, resume=, progress=, init_dir=, carry_optimizer=, save_optimizer=)

The label recipe serves classification and multiple choice (a label per option); the generation recipe
serves summaries and answers. A new family is a new module here, not a branch in every stage.
"""

from __future__ import annotations

import difflib
from types import ModuleType

from kdistill.config import TaskConfig
from kdistill.errors import KdistillError
from kdistill.recipes import generation, label

RECIPES: dict[str, ModuleType] = {"classification": label, "multiple_choice": label, "generation": generation}


def recipe_for(task: TaskConfig) -> ModuleType:
    """The recipe of ``task``'s family; an unknown kind is a sentence with the nearest known one."""
    if task.kind not in RECIPES:
        hint = difflib.get_close_matches(task.kind, list(RECIPES), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KdistillError(f"task.kind {task.kind!r} has no recipe.{extra} Known: {', '.join(RECIPES)}.")
    return RECIPES[task.kind]
