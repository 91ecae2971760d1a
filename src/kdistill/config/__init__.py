"""Typed configuration: the dataclasses of every section, YAML loading with `--set` overrides, built-in tasks.

The names a user or another stage needs are re-exported here: `from kdistill.config import RunConfig, load_config`.
"""

from kdistill.config.convert import field_docs, from_dict, to_dict
from kdistill.config.load import apply_overrides, dump_yaml, load_config
from kdistill.config.models import (
                                   EndpointConfig,
                                   EnsembleConfig,
                                   ModelConfig,
                                   SelectionConfig,
                                   TeacherConfig,
                                   hide_userinfo,
)
from kdistill.config.objective import (
    DIVERGENCE_KINDS,
    BalanceTerm,
    CETerm,
    ContrastiveTerm,
    HiddenTerm,
    KDTerm,
    ObjectiveConfig,
)
from kdistill.config.run import EvaluationConfig, RunConfig, StageConfig, TrainingConfig
from kdistill.config.search import SearchConfig
from kdistill.config.task_data import DataConfig, TaskConfig

__all__ = ["DIVERGENCE_KINDS", "BalanceTerm", "CETerm", "ContrastiveTerm", "DataConfig", "EndpointConfig", "EnsembleConfig",
           "EvaluationConfig", "HiddenTerm", "KDTerm", "ModelConfig", "ObjectiveConfig", "RunConfig", "SearchConfig",
           "SelectionConfig", "StageConfig", "TaskConfig", "TeacherConfig", "TrainingConfig", "apply_overrides", "dump_yaml",
           "field_docs", "from_dict", "hide_userinfo", "load_config", "to_dict"]
