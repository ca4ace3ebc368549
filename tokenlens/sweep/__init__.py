"""``tokenlens sweep``: the method map. Which post-training point moves the intended tokens most for the
fewest parameters and the least collateral drift, measured over seeds.

:data:`~tokenlens.sweep.configs.CONFIGS` lists the configurations, :func:`~tokenlens.sweep.runner.run_sweep`
trains and diffs them (resumably) into a :class:`~tokenlens.sweep.results.SweepMap`,
:func:`~tokenlens.sweep.recommend.recommend` ranks them. The sweep computes and never renders: the map's
renderers live with the other reports (:mod:`tokenlens.report.sweep_map`,
:mod:`tokenlens.report.plots.sweep`).
"""

from tokenlens.sweep.configs import (
    CONFIGS,
    DEFAULT,
    QUICK,
    SweepConfig,
    SweepFacts,
    select_configs,
    sweep_facts,
)
from tokenlens.sweep.recommend import CLEAR_GAIN, recommend
from tokenlens.sweep.results import (
    COLLATERAL_FLOOR,
    ConfigSummary,
    Recommendation,
    RunMetrics,
    Spread,
    SweepMap,
    run_metrics,
)
from tokenlens.sweep.runner import SweepPlan, load_run, run_sweep

__all__ = [
    "CLEAR_GAIN",
    "COLLATERAL_FLOOR",
    "CONFIGS",
    "DEFAULT",
    "QUICK",
    "ConfigSummary",
    "Recommendation",
    "RunMetrics",
    "Spread",
    "SweepConfig",
    "SweepFacts",
    "SweepMap",
    "SweepPlan",
    "load_run",
    "recommend",
    "run_metrics",
    "run_sweep",
    "select_configs",
    "sweep_facts",
]
