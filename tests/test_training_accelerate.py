"""The trainer's extras: data parallel over 2 CPU processes (torchrun, gloo) reaches the single-process
weights and resumes after a Ctrl-C on one process; gradient checkpointing really recomputes and gives the
same training; the progress callback reports tokens that the tokenizer confirms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenlens.errors import TokenlensError
from tokenlens.files import CHECKPOINT
from tokenlens.models.loading import load
from tokenlens.training.trainer import StepInfo, train

ROOT = Path(__file__).resolve().parents[1]
# Tokenize (real Qwen3 tokenizer) to ids below 1024. Five examples with batch_size 4: the schedule's batches
# have 4 and 1 examples, so with 2 processes one process has nothing to do on every other step.
DATA = [
    {"prompt": "a b c", "completion": " d e"},
    {"prompt": "he is in", "completion": " the st"},
    {"text": "a b c d e f"},
    {"prompt": "on at", "completion": " a b"},
    {"text": "b c d"},
]
KWARGS = dict(steps=4, batch_size=4, lr=1e-2, checkpoint_every=2, seed=0)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "five.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in DATA))
    return path


# Runs on each of the 2 processes: Ctrl-C (SIGINT) reaches process 1 only, inside step 3; every process
# must stop after that step, the main process alone saves, and a resume in the same processes finishes.
SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import tokenlens.training.step as stepping
    import tokenlens.training.trainer as trainer
    from tokenlens.models.loading import load
    from tokenlens.training import checkpoint as saving, output

    checkpoint, data, out, kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    rank = int(os.environ["RANK"])
    writes, saves, calls = [], [], []
    real_write, real_save, real_step = output.write, saving.save, stepping.step
    output.write = lambda *a, **k: (writes.append(1), real_write(*a, **k))[1]
    saving.save = lambda *a, **k: (saves.append(a[4]), real_save(*a, **k))[1]

    def step(*args):
        loss = real_step(*args)
        calls.append(loss)
        if rank == 1 and len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    stepping.step = step
    try:
        trainer.train(load(checkpoint), "lora", data, out, **kwargs)
        stopped_after = None
    except KeyboardInterrupt:
        stopped_after = len(calls)
    result = trainer.train(load(checkpoint), "lora", data, out, resume=True, **kwargs)
    prompt = trainer.train(load(checkpoint), "prompt", data, out + "-prompt", steps=2,
                           options={"virtual_tokens": 2})
    # one file per process: two processes printing to one pipe can interleave their lines
    with open(out + f"-report-{rank}.json", "w") as handle:
        json.dump({"rank": rank, "stopped_after": stopped_after, "saves": saves, "writes": len(writes),
                   "processes": result.processes, "losses": list(result.losses),
                   "prompt": list(prompt.losses)}, handle)
""")


def test_two_processes_match_one_and_resume(small_checkpoint, data_file, tmp_path):
    single = train(load(str(small_checkpoint)), "lora", data_file, tmp_path / "one", **KWARGS)
    # prompt tuning puts virtual tokens first, so the first label is a target too: a different token count
    options = {"virtual_tokens": 2}
    prompt = train(load(str(small_checkpoint)), "prompt", data_file, tmp_path / "p", steps=2, options=options)
    script = tmp_path / "dp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "two"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [str(script), str(small_checkpoint), str(data_file), str(out), json.dumps(KWARGS)]
    proc = subprocess.run(command + args, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(Path(f"{out}-report-{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["stopped_after"] == 3 and r["processes"] == 2 for r in reports)  # both stopped together
    assert reports[0]["saves"] == [2, 3] and reports[1]["saves"] == []  # periodic + Ctrl-C, main only
    assert [r["writes"] for r in reports] == [2, 0]  # one output per run, by the main process
    for report in reports:
        torch.testing.assert_close(report["losses"], list(single.losses), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(report["prompt"], list(prompt.losses), rtol=1e-5, atol=1e-5)

    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not (out / CHECKPOINT).exists()
    manifest = json.loads((out / "tokenlens-manifest.json").read_text())
    assert manifest["processes"] == 2 and len(manifest["losses"]) == 4
    two, one = (
        load_file(out / "adapter_model.safetensors"),
        load_file(tmp_path / "one/adapter_model.safetensors"),
    )
    assert two.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5)
    base = load(str(small_checkpoint)).model.state_dict()
    moved = load(str(out)).model.merge_and_unload().state_dict()  # the output loads, and it trained
    assert not torch.equal(
        moved["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )


class CountCalls:
    """Counts calls of one module's forward (checkpointing's recompute bypasses module hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.forward = 0, module.forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward(*args, **kwargs)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_recomputes_and_trains_the_same(small_checkpoint, data_file, tmp_path, method):
    from conftest import count_hooks

    runs = {}
    for checkpointing in (False, True):
        loaded = load(str(small_checkpoint))
        counter = CountCalls(loaded.model.model.layers[1].mlp)
        hooks = count_hooks(loaded.model)
        result = train(
            loaded,
            method,
            data_file,
            tmp_path / str(checkpointing),
            steps=3,
            lr=1e-2,
            gradient_checkpointing=checkpointing,
        )
        assert counter.calls == (6 if checkpointing else 3)  # one recompute per step in the backward pass
        assert count_hooks(loaded.model) == hooks  # the input-grad hook is gone again
        assert not any(getattr(m, "gradient_checkpointing", False) for m in loaded.model.modules())
        manifest = json.loads((tmp_path / str(checkpointing) / "tokenlens-manifest.json").read_text())
        assert manifest["gradient_checkpointing"] is checkpointing
        weights = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if v.requires_grad}
        runs[checkpointing] = (result.losses, weights)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-6, atol=1e-6)
    assert runs[True][1].keys() == runs[False][1].keys()
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_refuses_prefix_tuning(small_checkpoint, data_file, tmp_path):
    with pytest.raises(TokenlensError, match="prefix tuning"):
        train(
            load(str(small_checkpoint)),
            "prefix",
            data_file,
            tmp_path / "o",
            steps=1,
            gradient_checkpointing=True,
        )


def test_progress_reports_tokens_and_old_callback_still_works(
    small_checkpoint, data_file, tmp_path, qwen_tokenizer
):
    def count(text: str) -> int:
        return len(qwen_tokenizer(text, add_special_tokens=False)["input_ids"])

    per_step = sum(
        count(r["text"]) if "text" in r else count(r["prompt"]) + count(r["completion"]) for r in DATA
    )
    old, new = [], []
    train(
        load(str(small_checkpoint)),
        "lora",
        data_file,
        tmp_path / "o",
        steps=3,
        batch_size=len(DATA),  # every step sees the whole file
        on_step=lambda *args: old.append(args),
        on_progress=new.append,
    )
    assert [a[:2] for a in old] == [(1, 3), (2, 3), (3, 3)]
    assert all(isinstance(info, StepInfo) for info in new)
    assert [(i.step, i.total, i.loss) for i in new] == old
    assert [i.tokens for i in new] == [per_step] * 3
    assert all(i.tokens_per_s > 0 and i.elapsed_s > 0 for i in new)
    assert new[-1].tokens_per_s == pytest.approx(3 * per_step / new[-1].elapsed_s)


def test_cli_gradient_checkpointing_flag_and_progress_bar(small_checkpoint, data_file, tmp_path):
    import argparse

    from tokenlens.cli import train as train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    argv = ["train", "--model", str(small_checkpoint), "--method", "lora", "--data", str(data_file)]
    args = parser.parse_args(
        [*argv, "--out", str(tmp_path / "o"), "--steps", "2", "--gradient-checkpointing"]
    )
    assert args.run(args) == 0
    assert json.loads((tmp_path / "o" / "tokenlens-manifest.json").read_text())["gradient_checkpointing"]
    progress = train_cmd._progress(terminal=True)
    update = progress.__enter__()
    try:
        update(StepInfo(step=3, total=10, loss=1.25, tokens=40, tokens_per_s=1234.4, elapsed_s=0.1))
        task = progress.bar.tasks[0]
        assert (task.completed, task.total, task.fields) == (3, 10, {"loss": "1.2500", "rate": "1,234"})
    finally:
        progress.__exit__(None, None, None)
