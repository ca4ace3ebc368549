"""Rank-one edits against their closed form, the method saved/loaded/diffed, and ``tokenlens edit`` end to end
on a tiny checkpoint (exit codes 0/1/2, one-line errors)."""

from __future__ import annotations

import json

import pytest
import torch

from tokenlens.cli import main
from tokenlens.diff import DiffOptions, diff, pair_models, prompt_probes
from tokenlens.models.loading import load
from tokenlens.training import rank_one
from tokenlens.training.preserve import load_preserve
from tokenlens.training.trainer import train

KEEP = ["a b c d e f", "he is in the st", "on at a b", "a b c", "he is on the st", "on at he is"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit")
    (folder / "keep.txt").write_text("\n".join(KEEP) + "\n")
    (folder / "empty.txt").write_text("\n")
    (folder / "fact.jsonl").write_text(json.dumps({"prompt": "he is in", "completion": " the st"}) + "\n")
    return folder


def test_closed_form(small_checkpoint, files):
    loaded = load(str(small_checkpoint))
    tok = loaded.tokenizer
    kept = load_preserve(files / "keep.txt", tok, 64, 1024)
    ids = tok("he is in")["input_ids"] + tok(" the st")["input_ids"]
    edit = rank_one.compute_edit(loaded.model, ids, 3, 1, 1, kept, steps=5)
    weight = rank_one.down_proj(loaded.model, 1).weight.detach().clone()
    model = rank_one.apply_rank_one(loaded.model, {"layer": 1})
    rank_one.write_edit(model, edit)
    module = rank_one.down_proj(model, 1)
    with torch.no_grad():
        assert torch.allclose(module(edit.key[None])[0], edit.value.float(), atol=1e-5, rtol=1e-4)
        u = edit.direction.float()
        for seed in range(3):
            k = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed))
            k = k - (k @ u) / (u @ u) * u  # k^T C^-1 k* = 0
            assert torch.allclose(module(k[None])[0], weight @ k, atol=1e-6)
    # the key's own value differs from the base: the edit did something
    assert float((edit.value - edit.base_value.double()).norm()) > 0


def test_rank_one_trains_saves_loads_and_diffs(small_checkpoint, files, tmp_path):
    out = tmp_path / "r1"
    result = train(
        load(str(small_checkpoint)),
        "rank-one",
        files / "fact.jsonl",
        out,
        options={"layer": 1, "subject": "is"},
        preserve=files / "keep.txt",
    )
    assert result.steps == rank_one.STEPS and result.trainable == 64 + 32
    manifest = json.loads((out / "tokenlens-manifest.json").read_text())
    assert manifest["rank-one"]["layer"] == 1 and manifest["rank-one"]["position"] == 1
    assert manifest["options"]["layer"] == 1 and manifest["preserve"]["n_texts"] == len(KEEP)
    tuned = load(str(out))
    assert tuned.source == "peft"
    report = diff(pair_models(str(out)), prompt_probes(["he is in", "a b c"]), DiffOptions(causal=False))
    assert [c.layer for c in report.weights.changes] == [1]
    with pytest.raises(Exception, match="nothing to resume"):
        train(
            load(str(small_checkpoint)),
            "rank-one",
            files / "fact.jsonl",
            out,
            resume=True,
            options={"layer": 1, "subject": "is"},
        )


def _edit(small_checkpoint, files, out, *extra):
    return main(
        [
            "edit",
            "--model",
            str(small_checkpoint),
            "--preserve",
            str(files / "keep.txt"),
            "--keep",
            str(files / "keep.txt"),
            "--out",
            str(out),
            *extra,
        ]
    )


def test_edit_command(small_checkpoint, files, tmp_path, capsys):
    loaded = load(str(small_checkpoint))
    ids = loaded.tokenizer("he is in")["input_ids"]
    with torch.no_grad():
        top = int(loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    answer = loaded.tokenizer.decode([top])
    code = _edit(small_checkpoint, files, tmp_path / "none", "--prompt", "he is in", "--target", answer)
    assert code == 0 and "nothing to edit" in capsys.readouterr().out
    assert not (tmp_path / "none").exists()
    out = tmp_path / "e"
    code = _edit(
        small_checkpoint,
        files,
        out,
        "--prompt",
        "he is in",
        "--target",
        " the st",
        "--subject",
        "is",
        "--layer",
        "1",
        "--steps",
        "10",
    )
    printed = capsys.readouterr().out
    report = json.loads((out / "edit-report.json").read_text())
    assert report["status"] == "edited" and report["edited_layers"] == [1]
    assert code == (0 if report["passed"] else 1)
    assert [p["expect"] for p in report["probes"]] == ["changed"] + ["unchanged"] * (len(KEEP))
    moved = [p for p in report["probes"] if p["passed"] is False]
    assert all(f"{p['prompt']!r}" in printed for p in moved)  # what moved is listed
    assert (out / "edit-report.md").is_file() and load(str(out / "model")).source == "peft"
    # here the edit does not take (the tiny model's target stays below top-1): exit 1, the failure listed
    (tmp_path / "near.txt").write_text("he is in the\nhe is\n")
    code = main(
        [
            "edit",
            "--model",
            str(small_checkpoint),
            "--preserve",
            str(files / "keep.txt"),
            "--keep",
            str(tmp_path / "near.txt"),
            "--out",
            str(tmp_path / "e2"),
            "--prompt",
            "he is in",
            "--target",
            " the st",
            "--subject",
            "is",
            "--layer",
            "1",
            "--steps",
            "10",
            "--method",
            "rank-one",
        ]
    )
    report = json.loads((tmp_path / "e2" / "edit-report.json").read_text())
    failed = [p for p in report["probes"] if p["passed"] is False]
    assert code == 1 and not report["passed"] and [p["expect"] for p in failed] == ["changed"]
    assert "FAIL prompt 1 [changed] 'he is in'" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subject", "France"], "is not in the prompt"),
        (["--keep", "EMPTY"], "no passages"),
        (["--paraphrases", "MISSING"], "does not exist"),
        (["--method", "rome"], "choose one of"),
        (["--target", " "], "empty"),
    ],
)
def test_edit_bad_input_is_one_line(args, message, small_checkpoint, files, tmp_path, capsys):
    args = [
        str(files / "empty.txt") if a == "EMPTY" else str(tmp_path / "no.txt") if a == "MISSING" else a
        for a in args
    ]
    base = [
        "edit",
        "--model",
        str(small_checkpoint),
        "--prompt",
        "he is in",
        "--target",
        " the st",
        "--preserve",
        str(files / "keep.txt"),
        "--layer",
        "1",
        "--out",
        str(tmp_path / "o"),
    ]
    code = main(base + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_neighbour_prompts_swap_the_subject_and_keep_the_check_held_out():
    from tokenlens.training.neighbours import neighbour_prompts

    prompt = "The capital of France is"
    found = neighbour_prompts(
        prompt, "France", exclude={"The capital of Canada is", " The flag of France is "}
    )
    assert "The capital of Brazil is" in found and "Shakespeare" not in found[0]
    assert "The capital of Canada is" not in found and "The flag of France is" not in found  # excluded
    assert "The climate of France is" in found and prompt not in found
    assert len(found) == len(set(found))
    # the last occurrence is the one replaced (where the fact is read)
    assert "France, the capital of Brazil is" in neighbour_prompts(
        "France, the capital of France is", "France"
    )
    with pytest.raises(ValueError, match="not in the prompt"):
        neighbour_prompts(prompt, "Spain")
    # the built-in fact-edit task's controls are never generated: they stay held out for the check
    from tokenlens.diff import load_probes
    from tokenlens.tasks import get_task

    controls = {p.prompt for p in load_probes(get_task("fact-edit").probes) if p.expect == "unchanged"}
    assert not controls & set(neighbour_prompts(prompt, "France"))


def test_word_at_expands_a_located_subword_to_its_word():
    from tokenlens.training.edit import _word_at

    assert _word_at("The Eiffel Tower is in", "iffel") == "Eiffel"
    assert _word_at("The capital of France is", " France") == "France"


def test_edit_trains_with_the_neighbour_prompts(tiny_checkpoint, tmp_path, capsys):
    import hashlib

    from tokenlens.training.edit import NEIGHBOUR_WEIGHT, NEIGHBOURS_FILE

    keep = tmp_path / "keep.txt"
    keep.write_text("The capital of Brazil is\nThe sun rises in the\n")
    out = tmp_path / "n"
    argv = [
        "edit",
        "--model",
        str(tiny_checkpoint),
        "--keep",
        str(keep),
        "--prompt",
        "The capital of France is",
    ]
    code = main(
        [*argv, "--target", " Lyon", "--subject", "France", "--layer", "1", "--steps", "2", "--out", str(out)]
    )
    capsys.readouterr()
    assert code in (0, 1)
    written = (out / NEIGHBOURS_FILE).read_text().splitlines()
    assert "The capital of Canada is" in written and "The flag of France is" in written
    assert "The capital of Brazil is" not in written and "The capital of France is" not in written
    manifest = json.loads((out / "model" / "tokenlens-manifest.json").read_text())
    assert manifest["method"] == "lora" and manifest["preserve"]["weight"] == NEIGHBOUR_WEIGHT
    assert manifest["preserve"]["sha256"] == hashlib.sha256((out / NEIGHBOURS_FILE).read_bytes()).hexdigest()
    assert json.loads((out / "edit-report.json").read_text())["neighbour_prompts"] == len(written)
    # without a subject and without locating, there is no subject to build neighbours from: one line, exit 2
    code = main([*argv, "--target", " Lyon", "--layer", "1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "need the subject" in err and err.count("\n") == 1
