"""Evaluators: candidates in, named metrics out; and the pipeline that runs them for a problem."""
from .base import Evaluator, Metrics
from .problem import Constraint, Objective, Problem
from .pipeline import STATUSES, Evaluation, EvaluationPipeline
from .registry import create_evaluator, list_evaluators, register_evaluator
from .tabular import TabularAccuracy, TargetLatency

__all__ = [
    "Constraint", "Evaluation", "EvaluationPipeline", "Evaluator", "Metrics", "Objective", "Problem", "STATUSES", "TabularAccuracy", "TargetLatency",
    "create_evaluator", "list_evaluators", "register_dataset", "register_evaluator",
]


def __getattr__(name: str):
    # `register_dataset` lives with the data loaders, which import torch: load them on first use
    if name == "register_dataset":
        from .data import register_dataset

        return register_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
