"""The sweep: every configuration × seed trained on the same data and step budget, diffed on the same probes.

Layout of ``out``::

    runs/<config>-s<seed>/      a normal trainer output folder (+ sweep-run.json, diff.json)
    lr-search/<config>-lr<lr>/  learning-rate search runs (``--lr-search``), normal trainer folders too
    map.json, map.md, map.html, map_files/*.png   (written by the CLI)

Runs are resumable: a finished run is never retrained and its cached diff is reused; an interrupted one
resumes from its checkpoint. On CPU each run trains in a child process (``python -m tokenlens.sweep.child``)
so its peak RSS is its own; on GPU (or with ``isolate=False``) runs train in this process on a deep copy of
the base loaded once, and the peak is CUDA's ``max_memory_allocated`` (CPU: not measured).

Learning-rate search (``lr_search``): for each configuration, :data:`LR_FACTORS` × the method's default,
seed = the first seed, a quarter of the step budget (at least 2); the lowest final training loss wins.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens import files
from tokenlens.errors import TokenlensError
from tokenlens.sweep import jobs
from tokenlens.sweep.child import EXIT_DIVERGED
from tokenlens.sweep.configs import SweepConfig, sweep_facts
from tokenlens.sweep.recommend import recommend
from tokenlens.sweep.results import MAX_KL, MIN_GAIN, ConfigSummary, RunMetrics, SweepMap, run_metrics
from tokenlens.training.trainer import Diverged

LR_FACTORS = (1 / 3, 1.0, 3.0)


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep runs.

    Attributes:
        model: The base model's reference as the user gave it.
        task: The task name (``"custom"`` for a user's files).
        data: The training file (the same for every run).
        probes: The probe file.
        configs: The configurations.
        seeds: The seeds (every configuration runs each).
        steps: Optimizer steps per run.
        out: The output folder.
        batch_size: Examples per step.
        lr_search: Search the learning rate per configuration instead of the method's default.
        causal: Measure causal effects (exact patching of the top components) in each diff.
        force: Retrain every run (deleting the run folders this plan names) and recompute the diffs.
        isolate: Train each run in a child process (``None``: on CPU yes, on GPU no).
        dtype: Load dtype for the runs' bases.
        device: Load device.
        min_gain: The check threshold the runs are judged by for intended probes (``tokenlens check``'s).
        max_kl: The same for control probes (nats). Both only judge: changing them retrains nothing.
        corpus: A held-out text each run's diff measures per-token drift over (``"default"``: the built-in
            sample), or ``None``.
    """

    model: str
    task: str
    data: Path
    probes: Path
    configs: tuple[SweepConfig, ...]
    seeds: tuple[int, ...]
    steps: int
    out: Path
    batch_size: int = 4
    lr_search: bool = False
    causal: bool = False
    force: bool = False
    isolate: bool | None = None
    dtype: str = "auto"
    device: str = "auto"
    min_gain: float = MIN_GAIN
    max_kl: float = MAX_KL
    corpus: str | None = None

    def run_dir(self, config: str, seed: int) -> Path:
        return self.out / "runs" / f"{config}-s{seed}"


Event = Callable[[str], None]


def run_sweep(plan: SweepPlan, loaded: Any, on_event: Event | None = None) -> SweepMap:
    """Train, measure and diff every configuration × seed of ``plan``, then rank them.

    Args:
        plan: What to run.
        loaded: The base model, loaded once (runs train deep copies of it, or reload it in a child).
        on_event: Called with a one-line progress note before each run.

    Returns:
        The :class:`SweepMap` (rendering is the caller's).

    Raises:
        TokenlensError: Bad data or probes, a stale run folder, a failed child run.
        KeyboardInterrupt: After the running training saved its checkpoint (a rerun resumes).
    """
    from tokenlens.diff import load_probes
    from tokenlens.training.output import base_reference

    note = on_event or (lambda _: None)
    if plan.steps < 1 or not plan.seeds or not plan.configs:
        raise TokenlensError("a sweep needs at least one step, one seed and one configuration")
    probes = load_probes(plan.probes)
    facts = sweep_facts(loaded, plan.data, probes)
    isolate = plan.isolate
    if isolate is None:
        isolate = next(loaded.model.parameters()).device.type == "cpu"
    base = base_reference(loaded)

    def job(config: SweepConfig, seed: int, lr: float, steps: int, folder: Path, diff: bool) -> jobs.Job:
        return jobs.Job(
            config=config.name,
            method=config.method,
            options=config.options(facts),
            seed=seed,
            steps=steps,
            lr=lr,
            batch_size=plan.batch_size,
            data=str(plan.data),
            probes=str(plan.probes),
            run_dir=str(folder),
            base=base,
            dtype=plan.dtype,
            device=plan.device,
            causal=plan.causal,
            diff=diff,
            preserve=config.preserve,
            corpus=plan.corpus,
        )

    def execute(j: jobs.Job) -> None:
        if plan.force:
            _clear(Path(j.run_dir))
        elif jobs.finished(j) and (not j.diff or jobs.cached_diff(j) is not None):
            jobs.check_manifest(j)  # nothing to do, but a stale folder is still refused
            return
        if isolate:
            _run_child(j)
        else:
            jobs.train_job(j, loaded)
            if j.diff:
                jobs.diff_job(j)

    lrs = {c.name: c.lr for c in plan.configs}
    searched: dict[str, dict[float, float]] = {}
    if plan.lr_search:
        for config in plan.configs:
            searched[config.name] = _search_lr(plan, config, job, execute, note)
            lrs[config.name] = min(searched[config.name], key=searched[config.name].get)
    total = len(plan.configs) * len(plan.seeds)
    summaries = []
    for config in plan.configs:
        runs = []
        for seed in plan.seeds:
            folder = plan.run_dir(config.name, seed)
            j = job(config, seed, lrs[config.name], plan.steps, folder, diff=True)
            state = _state(j, plan.force)
            done = len(summaries) * len(plan.seeds) + len(runs) + 1
            note(f"[{done}/{total}] {config.name} seed {seed}: {state}")
            execute(j)
            runs.append(load_run(folder, min_gain=plan.min_gain, max_kl=plan.max_kl))
        summaries.append(
            ConfigSummary(config.name, config.method, config.summary, lrs[config.name], tuple(runs))
        )
    notes = []
    if isolate is False and next(loaded.model.parameters()).device.type == "cpu":
        notes.append("peak memory not measured: runs trained in-process on CPU")
    return SweepMap(
        model=plan.model,
        task=plan.task,
        data=str(plan.data),
        probes=str(plan.probes),
        steps=plan.steps,
        seeds=tuple(plan.seeds),
        causal=plan.causal,
        configs=tuple(summaries),
        recommendation=recommend(summaries, len(plan.seeds), min_gain=plan.min_gain, max_kl=plan.max_kl),
        lr_search=searched,
        notes=tuple(notes),
        min_gain=plan.min_gain,
        max_kl=plan.max_kl,
    )


def _search_lr(plan: SweepPlan, config: SweepConfig, job, execute, note: Event) -> dict[float, float]:
    """Final training loss per candidate learning rate (:data:`LR_FACTORS` × the default; the first seed;
    a quarter of the step budget, at least 2 steps); a run that diverges (the trainer stops at a non-finite
    loss) counts as ``inf``."""
    steps = max(2, plan.steps // 4)
    losses = {}
    for factor in LR_FACTORS:
        lr = float(f"{config.lr * factor:.3g}")
        folder = plan.out / "lr-search" / f"{config.name}-lr{lr:g}"
        note(f"lr search: {config.name} lr {lr:g} ({steps} steps)")
        try:
            execute(job(config, plan.seeds[0], lr, steps, folder, diff=False))
        except Diverged:  # the trainer stops at a non-finite loss and writes no output
            losses[lr] = math.inf
            continue
        loss = float(jobs.read_json(folder / files.MANIFEST)["final_loss"])
        losses[lr] = loss if math.isfinite(loss) else math.inf
    return losses


def _state(job: jobs.Job, force: bool) -> str:
    """What running ``job`` will do: ``training``, ``resuming``, ``diffing`` or ``cached``."""
    if force:
        return "training"
    if jobs.finished(job):
        return "cached" if jobs.cached_diff(job) is not None else "diffing"
    return "resuming" if (Path(job.run_dir) / files.CHECKPOINT).is_dir() else "training"


def load_run(folder: Path, *, min_gain: float = MIN_GAIN, max_kl: float = MAX_KL) -> RunMetrics:
    """A finished run's :class:`~tokenlens.sweep.results.RunMetrics`, from its folder's files only, its probes
    judged at the check thresholds ``min_gain`` and ``max_kl``."""
    manifest = jobs.read_json(folder / files.MANIFEST)
    record_path = folder / files.RUN_RECORD
    record = (
        jobs.read_json(record_path) if record_path.is_file() else {"config": folder.name.rsplit("-s", 1)[0]}
    )
    diff = jobs.read_json(folder / files.DIFF_FILE)
    return run_metrics(manifest, record, diff, str(folder), min_gain=min_gain, max_kl=max_kl)


def _clear(folder: Path) -> None:
    """``--force``: remove a run folder the sweep made (refusing one that is not a tokenlens run)."""
    if not folder.exists():
        return
    ours = any((folder / name).exists() for name in (files.MANIFEST, files.CHECKPOINT, files.RUN_RECORD))
    if not ours and any(folder.iterdir()):
        raise TokenlensError(f"{folder} is not a tokenlens run; remove it yourself")
    shutil.rmtree(folder)


def _run_child(job: jobs.Job) -> None:
    """Run ``job`` in ``python -m tokenlens.sweep.child``; wait for it to save its checkpoint on Ctrl-C."""
    command = [sys.executable, "-m", "tokenlens.sweep.child", job.to_json()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = process.communicate()
    except KeyboardInterrupt:
        process.wait()  # the child got the same Ctrl-C: it saves a checkpoint and exits
        raise
    if process.returncode in (130, -2):
        raise KeyboardInterrupt
    if process.returncode != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        last = lines[-1].removeprefix("tokenlens: error: ") if lines else f"exit code {process.returncode}"
        failed = Diverged if process.returncode == EXIT_DIVERGED else TokenlensError
        raise failed(f"run {job.config} seed {job.seed} failed: {last}")
