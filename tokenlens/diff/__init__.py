"""Base vs fine-tune: which token choices moved, which components moved them, and was it intended.

``pair_models`` loads the two sides (one model in memory for an adapter), ``load_probes`` reads a probe set,
``diff`` computes everything, ``DiffReport.passed`` is the check's verdict, ``DiffReport.metrics`` the
knowledge-editing metrics; ``read_corpus`` and ``corpus_drift`` measure the drift over a held-out text.
"""

from tokenlens.diff.check import MAX_KL, MIN_GAIN, judge
from tokenlens.diff.corpus import corpus_drift, read_corpus
from tokenlens.diff.engine import DiffOptions, diff
from tokenlens.diff.pairing import ModelPair, check_compatible, pair_models
from tokenlens.diff.probes import load_probes, prompt_probes
from tokenlens.diff.result import (
    ComponentEffect,
    CorpusDrift,
    DiffReport,
    DriftedContext,
    EditMetric,
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
    "CorpusDrift",
    "DiffOptions",
    "DiffReport",
    "DriftedContext",
    "EditMetric",
    "ModelPair",
    "Probe",
    "ProbeDiff",
    "Telescope",
    "WeightChange",
    "WeightSummary",
    "check_compatible",
    "corpus_drift",
    "diff",
    "judge",
    "load_probes",
    "pair_models",
    "prompt_probes",
    "read_corpus",
    "weight_summary",
]
