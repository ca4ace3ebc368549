"""How many CPU threads torch uses for one operation, chosen deliberately rather than by default.

torch starts with one intra-op thread per CPU it sees. tokenlens runs many small forward passes (a diff's
patched runs, a grid's cells), and on a shared machine whose cores are busy with other work, threads that
wait for each other at every small matrix product make each pass many times slower: on a 2-core machine at
load 8, one 5-token forward of SmolLM2-135M took 11.8 s with two threads and 1.06 s with one
(``reports/bench-threads.md`` has the measurements this policy follows).

:func:`configure_threads` is the policy; the command line calls it once at start-up (``--threads N``
overrides it). A library user who wants the same calls it once before the first model runs; tokenlens
never changes torch's threads on its own, so a ``torch.set_num_threads`` of your own is left as it is.
The order:

1. an explicit number (``--threads N``, ``configure_threads(N)``);
2. ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` in the environment (torch reads the first itself; the second
   is applied);
3. otherwise the physical cores this process may run on (hyper-threads and CPUs outside the affinity mask
   or the cgroup's CPU quota do not count), reduced to what is idle when the machine is already busy:
   ``cores − load average``, at least 1 — oversubscribed threads were the slowest case measured.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` decided.

    Attributes:
        threads: torch's intra-op threads now.
        reason: Why, in words (``"--threads 2"``, ``"OMP_NUM_THREADS=1"``, ``"2 physical cores, load 0.4"``).
    """

    threads: int
    reason: str


def physical_cores() -> int:
    """Physical cores this process may use: the affinity mask's CPUs counted once per core (hyper-threads of
    one core are one), capped by a cgroup v2 CPU quota; at least 1."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores = _cores_of(allowed) or len(allowed)
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cores_of(cpus: set[int]) -> int:
    """Distinct (package, core) pairs among ``cpus`` from sysfs; 0 when sysfs does not say."""
    seen = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return 0
        seen.add((package, core))
    return len(seen)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` (``quota period``), or ``None`` without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(threads: int | None = None) -> ThreadChoice:
    """The number of threads the policy picks (see the module docstring), without applying it.

    Raises:
        ValueError: ``threads`` below 1, or an environment variable that is not a positive integer.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        return ThreadChoice(threads, f"--threads {threads}")
    for name in ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                count = int(value.split(",")[0])
            except ValueError:
                count = 0
            if count < 1:
                raise ValueError(f"{name}={value!r}: expected a positive whole number of threads")
            return ThreadChoice(count, f"{name}={count}")
    cores = physical_cores()
    load = _load()
    if load is None:
        return ThreadChoice(cores, f"{cores} physical core(s)")
    idle = max(1, min(cores, math.floor(cores - load + 0.5)))
    return ThreadChoice(idle, f"{cores} physical core(s), load {load:.1f}")


def configure_threads(threads: int | None = None) -> ThreadChoice:
    """Set torch's intra-op threads by the policy of the module docstring and say what was chosen.

    Call it once, before the first model runs (the command line does). ``threads`` overrides the policy.

    Raises:
        ValueError: ``threads`` below 1, or a malformed ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``.
    """
    import torch

    choice = choose_threads(threads)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
