"""kdistill: task-specific knowledge distillation with a measured report card."""

__version__ = "0.1.0"
