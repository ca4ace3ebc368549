"""Base vs fine-tune: which token choices moved, which components moved them, and was it intended.

``pair_models`` loads the two sides (one model in memory for an adapter), ``load_probes`` reads a probe set,
``diff`` computes everything, ``DiffReport.passed`` is the check's verdict.
"""

from tokenlens.diff.check import MAX_KL, MIN_GAIN, judge
from tokenlens.diff.engine import DiffOptions, diff
from tokenlens.diff.pairing import ModelPair, check_compatible, pair_models
from tokenlens.diff.probes import load_probes, prompt_probes
from tokenlens.diff.result import (
    ComponentEffect,
    DiffReport,
    Probe,
    ProbeDiff,
    Telescope,
    WeightChange,
    WeightSummary,
)
from tokenlens.diff.weights import weight_summary

__all__ = [
    "MAX_KL",
    "MIN_GAIN",
    "ComponentEffect",
    "DiffOptions",
    "DiffReport",
    "ModelPair",
    "Probe",
    "ProbeDiff",
    "Telescope",
    "WeightChange",
    "WeightSummary",
    "check_compatible",
    "diff",
    "judge",
    "load_probes",
    "pair_models",
    "prompt_probes",
    "weight_summary",
]
