"""The thread policy (:mod:`tokenlens.threads`): an explicit number, then ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``, then the idle physical cores. Each case runs in a fresh interpreter, because torch reads
the environment when it starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tokenlens import threads

PROBE = (
    "import torch; from tokenlens.threads import configure_threads; "
    "import sys; n = None if len(sys.argv) < 2 else int(sys.argv[1]); "
    "c = configure_threads(n); print(c.threads, torch.get_num_threads(), c.reason, sep='|')"
)


def _run(env: dict[str, str], *args: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().split("|")


def test_environment_variables_are_respected():
    assert _run({"OMP_NUM_THREADS": "1"}) == ["1", "1", "OMP_NUM_THREADS=1"]
    assert _run({"MKL_NUM_THREADS": "1"}) == ["1", "1", "MKL_NUM_THREADS=1"]
    assert _run({"OMP_NUM_THREADS": "2"}, "1") == ["1", "1", "--threads 1"]  # explicit beats environment


def test_without_environment_the_idle_physical_cores():
    chosen, actual, reason = _run({})
    assert chosen == actual
    assert 1 <= int(chosen) <= threads.physical_cores()
    assert "physical core" in reason


def test_choice_follows_the_load(monkeypatch):
    for name in threads.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    for load, expected in ((0.2, 4), (1.4, 3), (2.6, 1), (3.9, 1), (11.0, 1)):
        monkeypatch.setattr(threads, "_load", lambda load=load: load)
        assert threads.choose_threads().threads == expected, load
    monkeypatch.setattr(threads, "_load", lambda: None)
    assert threads.choose_threads().threads == 4


def test_bad_values_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="at least 1"):
        threads.choose_threads(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        threads.choose_threads()


def test_cli_threads_option_bad_input_is_one_line():
    env = {k: v for k, v in os.environ.items() if k not in threads.ENV_VARS}
    for argv in (["--threads", "0", "models"], ["models", "--threads", "x"]):
        done = subprocess.run(
            [sys.executable, "-m", "tokenlens.cli", *argv], env=env, capture_output=True, text=True
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr and "--threads" in done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "tokenlens.cli", "models"],
        env={**env, "OMP_NUM_THREADS": "many"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("tokenlens: error: OMP_NUM_THREADS='many'")


def test_physical_cores_counts_within_the_affinity_mask():
    assert 1 <= threads.physical_cores() <= len(os.sched_getaffinity(0))
