"""kdistill: task-specific knowledge distillation of language models, with a measured report card.

    import kdistill
    result = kdistill.distill("my.yaml")      # or a RunConfig, or None for the built-in default job
    result.student, result.report, result.comparison

The rest of the API is in kdistill.api. Importing this package loads nothing heavy: `distill` and
`Result` are looked up on first use.
"""

__version__ = "0.1.0"
__all__ = ["Result", "distill"]


def __getattr__(name: str):
    if name in __all__:
        from kdistill import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")
