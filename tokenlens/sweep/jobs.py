"""One sweep run: train a configuration with one seed into a normal trainer folder, measure it, diff it.

A run folder ``runs/<config>-s<seed>/`` is exactly what ``tokenlens train`` writes (so ``tokenlens diff``,
``tokenlens.load`` and ``--resume`` all work on it) plus two files of the sweep's own:

* ``sweep-run.json`` — the configuration's name and the peak memory of training;
* ``diff.json`` — the probe-level numbers of the diff against the base (schema :data:`DIFF_SCHEMA`), keyed by
  the probe file's hash and the causal setting, so a rerun reuses it and a changed probe set recomputes it.

A folder with a manifest is finished and never retrained (the manifest must match the run's settings: a
different learning rate, step count, seed, options or data is refused, not silently reused); a folder with a
trainer checkpoint resumes from it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError, option
from tokenlens.files import CHECKPOINT, DIFF_FILE, DIFF_SCHEMA, MANIFEST, RUN_RECORD
from tokenlens.io import atomic_write_text
from tokenlens.options import AUTO

EXACT = 3
"""With ``--causal``: components patched exactly per probe (the top ones by attribution-patching estimate)."""


def _retrain() -> str:
    return f"pass {option('force', True)} to retrain or choose another {option('out_dir')}"


@dataclass(frozen=True)
class Job:
    """Everything one run needs, JSON-serialisable (it crosses into a child process).

    Attributes:
        config: The configuration's name.
        method: The trainer method.
        options: The method's options.
        seed: The seed.
        steps: Optimizer steps.
        lr: Learning rate.
        batch_size: Examples per step.
        data: The training file.
        probes: The probe file.
        run_dir: The run's folder.
        base: The base model's loadable reference (as the trainer records it).
        dtype: Load dtype.
        device: Load device.
        causal: Measure causal effects in the diff.
        diff: Diff the result (``False`` for learning-rate search runs).
        preserve: The trainer's preserve file (``"default"``: the built-in set), or ``None``.
        corpus: A held-out text whose per-token drift the diff measures (``"default"``: the built-in
            sample), or ``None``.
    """

    config: str
    method: str
    options: dict[str, Any]
    seed: int
    steps: int
    lr: float
    batch_size: int
    data: str
    probes: str
    run_dir: str
    base: str
    dtype: str = "auto"
    device: str = "auto"
    causal: bool = False
    diff: bool = True
    preserve: str | None = None
    corpus: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        return cls(**json.loads(text))


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file the sweep wrote (or the trainer's manifest).

    Raises:
        TokenlensError: Unreadable or not a JSON object.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenlensError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise TokenlensError(f"{path} is not a JSON object")
    return value


def preserve_sha256(preserve: str) -> str:
    """A preserve file's sha256 (``"default"``: the built-in set), as the trainer's manifest records it."""
    from tokenlens.training.preserve import resolve_path

    return sha256_file(resolve_path(preserve))


def finished(job: Job) -> bool:
    """The run's folder holds a finished training run."""
    return (Path(job.run_dir) / MANIFEST).is_file()


def check_manifest(job: Job) -> dict:
    """The finished run's manifest, refused when it was trained with other settings than ``job``'s.

    Raises:
        TokenlensError: A setting differs (the message names it and says how to retrain).
    """
    from tokenlens.training.methods import get_method

    folder = Path(job.run_dir)
    manifest = read_json(folder / MANIFEST)
    options = get_method(job.method).resolve(job.options)
    recorded = manifest.get("options")
    if isinstance(recorded, dict):  # what the trainer chose (layer=auto → a layer) stands for auto / unset
        options = {k: recorded.get(k) if v in (AUTO, None) else v for k, v in options.items()}
    expected = {
        "method": job.method,
        "options": options,
        "preserve": None if job.preserve is None else preserve_sha256(job.preserve),
        "seed": job.seed,
        "steps": job.steps,
        "data_sha256": sha256_file(job.data),
        "base_model": job.base,
    }
    for key, value in expected.items():
        found = manifest.get(key)
        if key == "preserve" and isinstance(found, dict):
            found = found.get("sha256")
        if found != value:
            raise TokenlensError(
                f"{folder} was trained with another {key} ({manifest.get(key)!r}, this sweep: {value!r}); "
                f"{_retrain()}"
            )
    if not math.isclose(float(manifest.get("lr", math.nan)), job.lr, rel_tol=1e-9):
        raise TokenlensError(
            f"{folder} was trained with lr {manifest.get('lr')!r}, this sweep uses {job.lr!r}; {_retrain()}"
        )
    return manifest


def train_job(job: Job, base: Any | None) -> None:
    """Train ``job`` unless its folder is finished (resuming from a checkpoint when there is one).

    Args:
        job: The run.
        base: The base :class:`~tokenlens.models.loading.LoadedModel` to train a deep copy of; ``None`` in a
            child process, which loads the base itself and reports its own peak RSS.

    Raises:
        TokenlensError: A folder that is neither finished, resumable nor empty; bad data; a stale manifest.
        KeyboardInterrupt: After the trainer saved a checkpoint.
    """
    import torch

    from tokenlens.models.loading import load
    from tokenlens.training.trainer import train

    folder = Path(job.run_dir)
    if finished(job):
        check_manifest(job)
        return
    resume = (folder / CHECKPOINT).is_dir()
    if folder.exists() and any(folder.iterdir()) and not resume:
        raise TokenlensError(
            f"{folder} exists but is not a tokenlens run: remove it or choose another {option('out_dir')}"
        )
    if base is None:
        loaded = load(job.base, dtype=job.dtype, device=job.device)
    else:
        loaded = dataclasses.replace(base, model=copy.deepcopy(base.model))
    cuda = next(loaded.model.parameters()).device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(
        loaded,
        job.method,
        job.data,
        folder,
        steps=job.steps,
        lr=job.lr,
        batch_size=job.batch_size,
        seed=job.seed,
        options=job.options,
        resume=resume,
        preserve=job.preserve,
    )
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    elif base is None:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "child process peak RSS"
    else:
        peak, kind = None, "not measured (in-process CPU run)"
    record = {"config": job.config, "seed": job.seed, "peak_mb": peak, "peak_kind": kind, "resumed": resume}
    atomic_write_text(folder / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def cached_diff(job: Job) -> dict | None:
    """The run's ``diff.json`` when it was computed for this probe file and causal setting, else ``None``."""
    path = Path(job.run_dir) / DIFF_FILE
    if not path.is_file():
        return None
    cached = read_json(path)
    key = tuple(cached.get(k) for k in ("schema", "probes_sha256", "causal", "corpus_sha256"))
    wanted = (DIFF_SCHEMA, sha256_file(job.probes), job.causal, corpus_sha256(job.corpus))
    return cached if key == wanted else None


def corpus_sha256(corpus: str | None) -> str | None:
    """The held-out text's sha256 (``"default"``: the built-in sample); ``None`` without one."""
    if corpus is None:
        return None
    from tokenlens.diff.corpus import corpus_path

    return sha256_file(corpus_path(corpus))


def diff_job(job: Job) -> dict:
    """The run's ``diff.json`` content: reused when it matches the probe file and causal setting, else
    computed (base vs the run folder, via :func:`tokenlens.diff.pair_models`) and written."""
    from tokenlens.diff import DiffOptions, diff, load_probes, pair_models

    cached = cached_diff(job)
    if cached is not None:
        return cached
    path = Path(job.run_dir) / DIFF_FILE
    probes_sha = sha256_file(job.probes)
    pair = pair_models(job.run_dir, job.base, dtype=job.dtype, device=job.device)
    options = DiffOptions(causal=job.causal, exact=EXACT, reverse=False, drill=0)
    report = diff(pair, load_probes(job.probes), options)
    summary = diff_summary(report, probes_sha, job.causal)
    if job.corpus is not None:
        from tokenlens.diff import corpus_drift, read_corpus

        drift = corpus_drift(pair, read_corpus(job.corpus), drifted=0)
        summary["corpus_sha256"] = corpus_sha256(job.corpus)
        summary["corpus"] = {
            "source": drift.source,
            "tokens": drift.tokens,
            "mean_kl": drift.mean_kl,
            "p99_kl": drift.p99_kl,
            "top1_changed": drift.top1_changed,
        }
    atomic_write_text(path, json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return summary


def diff_summary(report: Any, probes_sha256: str, causal: bool) -> dict:
    """The probe-level numbers of a :class:`~tokenlens.diff.DiffReport` that the map needs."""
    probes = []
    for p in report.probes:
        probes.append(
            {
                "label": p.probe.label,
                "expect": p.probe.expect,
                "group": p.probe.group,
                "tracked": p.tracked.token,
                "tracked_id": p.tracked.id,
                "tracked_is_target": p.tracked_is_target,
                "p_base": p.tracked.prob,
                "p_tuned": p.tracked_tuned.prob,
                "kl": p.kl,
                "flipped": p.flipped,
                "base_top1": p.base_top[0].token,
                "tuned_top1": p.tuned_top[0].token,
                "target_top1_base": p.tracked_is_target and p.base_top[0].id == p.tracked.id,
                "target_top1_tuned": p.tracked_is_target and p.tuned_top[0].id == p.tracked.id,
                "terms": p.split.as_dict(),
                "causal": {c.name: c.causal for c in p.components if c.causal is not None},
            }
        )
    return {
        "schema": DIFF_SCHEMA,
        "probes_sha256": probes_sha256,
        "causal": causal,
        "base": report.base,
        "tuned": report.tuned,
        "probes": probes,
    }
