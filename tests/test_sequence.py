"""Whole answers: every step's split against independent computations, the sequence total against the
model's own summed log-softmax, tokenization of the completion, generation, the views and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny

from tokenlens.attribution.direct import attribute
from tokenlens.attribution.sequence import attribute_sequence
from tokenlens.attribution.sequence_inputs import completion_ids
from tokenlens.cli import main
from tokenlens.errors import TokenlensError
from tokenlens.report.json_report import attribution_to_dict
from tokenlens.report.sequence_json import sequence_to_dict

PROMPT = "The capital of France is"
COMPLETION = " Paris, of course."


def _hf_log_softmax(model, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain HF forward (every position's logits): the logits and their log-softmax, in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].double()
    return logits, logits.log_softmax(-1)


def _close(a: float, b: float, scale: float = 1.0) -> bool:
    return abs(a - b) <= 2e-5 * max(1.0, abs(scale))


@pytest.mark.parametrize("kind", ["llama", "qwen3-tied-gqa", "qwen2-bias"])
def test_every_step_matches_a_plain_forward_and_a_single_attribution(kind, tiny_loaded):
    loaded = tiny_loaded(kind)
    for logprob in (False, True):
        r = attribute_sequence(
            loaded, PROMPT, completion=COMPLETION, logprob=logprob, heads=True, sources=["L1"]
        )
        ids = list(r.prompt_ids + r.answer_ids)
        logits, log_probs = _hf_log_softmax(loaded.model, ids)
        assert r.answer_tokens == (" Paris", ",", " of", " course", ".") and r.tokenization == "joint"
        assert not r.notes and r.exact
        for k, (step, target) in enumerate(zip(r.steps, r.answer_ids, strict=True)):
            position = len(r.prompt_ids) - 1 + k
            own = float(log_probs[position, target] if logprob else logits[position, target])
            d = step.decomposition
            assert step.position == position and step.token_ids == tuple(ids[: position + 1])
            assert _close(d.logit, own, own) and _close(d.total, own, float(d.contributions.abs().max()))
            single = attribute(
                loaded, list(step.token_ids), target_id=target, logprob=logprob, heads=True, sources=["L1"]
            )
            assert single.decomposition.names == d.names and single.position == step.position
            assert torch.allclose(single.decomposition.contributions, d.contributions, atol=1e-6, rtol=1e-5)
            assert torch.allclose(single.heads.contributions, step.heads.contributions, atol=1e-6, rtol=1e-5)
            ours, theirs = step.sources[0], single.sources[0]
            assert ours.contributions.shape == theirs.contributions.shape == (position + 1,)
            assert torch.allclose(ours.contributions, theirs.contributions, atol=1e-6, rtol=1e-5)
            assert [s.id for s in single.top] == [s.id for s in step.top]
        expected = sum(float(log_probs[len(r.prompt_ids) - 1 + k, t]) for k, t in enumerate(r.answer_ids))
        assert _close(r.sequence.logprob, expected, expected) and _close(r.sequence.total, expected, expected)
        if logprob:  # the sequence split is the sum of the steps' own log-probability splits
            assert torch.allclose(r.sequence.contributions.float(), r.grid.sum(0), atol=1e-5)


def test_head_bias_and_neurons_and_experts_per_step(tiny_loaded):
    from conftest import add_head_bias

    loaded = tiny_loaded("qwen3-untied-mha")
    add_head_bias(loaded.model)
    r = attribute_sequence(loaded, PROMPT, completion=COMPLETION, neurons=3, logprob=True)
    assert "logit_bias" in r.names and r.exact
    for step in r.steps:
        single = attribute(loaded, list(step.token_ids), target_id=step.target.id, neurons=3, logprob=True)
        assert torch.allclose(single.decomposition.contributions, step.decomposition.contributions, atol=1e-5)
        assert torch.equal(single.neurons.ids, step.neurons.ids)
    moe = tiny_loaded("qwen3-moe")
    r = attribute_sequence(moe, PROMPT, completion=" Paris", experts=True)
    single = attribute(moe, list(r.steps[-1].token_ids), target_id=r.answer_ids[-1], experts=True)
    assert torch.allclose(single.experts.contributions, r.steps[-1].experts.contributions, atol=1e-6)


def test_a_contrast_per_step_and_bfloat16(tiny_loaded):
    loaded = tiny_loaded("llama")
    r = attribute_sequence(loaded, PROMPT, completion=" Paris is", vs=" London")
    assert r.quantity == "logit_difference" and all(s.contrast.token == " London" for s in r.steps)
    for step in r.steps:
        single = attribute(loaded, list(step.token_ids), target_id=step.target.id, vs=" London")
        assert _close(single.decomposition.logit, step.decomposition.logit)
    half = tiny_loaded("qwen3-tied-gqa")
    half.model.to(torch.bfloat16)
    r = attribute_sequence(half, PROMPT, completion=COMPLETION)
    assert r.exact and all(s.decomposition.model_value is not None for s in r.steps)
    # a 16-bit model rounds differently at another sequence length, so a step is compared with the model's
    # own 16-bit forward over prompt + answer (not with a shorter run on its prefix)
    logits, _ = _hf_log_softmax(half.model, list(r.prompt_ids + r.answer_ids))
    for step in r.steps:
        own = float(logits[step.position, step.target.id])
        assert abs(step.decomposition.model_value - own) <= 0.02 * max(1.0, abs(own))


def test_generation_greedy_and_sampled(tiny_loaded, qwen_tokenizer):
    loaded = tiny_loaded("qwen3-tied-gqa")
    r = attribute_sequence(loaded, PROMPT, generate=4)
    assert r.source == "generated" and len(r.answer_ids) == 4 and not r.generation.sample
    limit = len(qwen_tokenizer)
    ids = list(r.prompt_ids)
    for token in r.answer_ids:  # greedy: each token is the plain forward's top-1 among decodable ids
        logits, _ = _hf_log_softmax(loaded.model, ids)
        assert token == int(logits[-1, :limit].argmax())
        ids.append(token)
    again = attribute_sequence(loaded, PROMPT, completion=list(r.answer_ids))
    assert torch.allclose(again.grid, r.grid) and again.tokenization == "ids"
    a = attribute_sequence(loaded, PROMPT, generate=4, sample=True, temperature=2.0, seed=7)
    b = attribute_sequence(loaded, PROMPT, generate=4, sample=True, temperature=2.0, seed=7)
    c = attribute_sequence(loaded, PROMPT, generate=4, sample=True, temperature=2.0, seed=8)
    assert a.answer_ids == b.answer_ids != c.answer_ids and a.generation.seed == 7 and a.exact


class _Stub:
    """A tokenizer whose joint encoding of prompt + completion differs from the completion's own tokens."""

    table = {"P": [1], "PC": [1, 5], "C": [2, 3], "QC": [9, 3]}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.table[text]}

    def decode(self, ids, **_):
        return "".join(f"<{i}>" for i in ids)


def test_completion_tokenization_joint_separate_and_notes(tiny_loaded, qwen_tokenizer):
    ids, how, notes = completion_ids(_Stub(), [1], "P", "C")
    assert ids == [5] and how == "joint" and "differently after the prompt" in notes[0]
    ids, how, notes = completion_ids(_Stub(), [1], "P", "C", tokenize="separate")
    assert ids == [2, 3] and how == "separate" and "on its own, as asked" in notes[0]
    ids, how, notes = completion_ids(
        _Stub(), [4], "Q", "C"
    )  # joint tokens [9, 3]: the prompt's are no prefix
    assert ids == [2, 3] and how == "separate" and "merge across their boundary" in notes[0]
    # the real tokenizer: a trailing space merges with "Paris" when read whole, so the fallback is used
    loaded = tiny_loaded("llama")
    r = attribute_sequence(loaded, PROMPT + " ", completion="Paris")
    assert r.tokenization == "separate" and r.answer_tokens == ("Paris",) and "merge" in r.notes[0]
    joint = qwen_tokenizer(PROMPT + COMPLETION)["input_ids"]
    r = attribute_sequence(loaded, PROMPT, completion=COMPLETION)
    assert list(r.prompt_ids + r.answer_ids) == joint


def test_views_show_steps_sequence_and_notes(tiny_loaded, tmp_path):
    from tokenlens.report.kit.terminal import renderables_to_text
    from tokenlens.report.plots import figure_png
    from tokenlens.report.plots.sequence import sequence_figures
    from tokenlens.report.sequence_html import render_sequence_html
    from tokenlens.report.sequence_markdown import render_sequence_markdown
    from tokenlens.report.sequence_terminal import render_sequence

    loaded = tiny_loaded("qwen3-tied-gqa")
    r = attribute_sequence(loaded, PROMPT + " ", completion="Paris <b>&", heads=True)
    data = json.loads(json.dumps(sequence_to_dict(r)))
    single = attribution_to_dict(r.steps[0])
    assert [set(step) for step in data["steps"]] == [set(single)] * len(r.steps)
    assert data["steps"][1]["target"] == {"id": r.answer_ids[1], "token": r.answer_tokens[1]}
    assert data["notes"] == list(r.notes) and data["answer"]["tokenization"] == "separate"
    seq = data["sequence"]
    assert [t["token"] for t in seq["tokens"]] == list(r.answer_tokens)
    assert abs(sum(c["logprob"] for c in seq["components"]) - seq["logprob"]) <= seq["check"]["tolerance"]
    assert abs(sum(t["logprob"] for t in seq["tokens"]) - seq["logprob"]) < 1e-9
    text = renderables_to_text(render_sequence(r, "L1.attn"))
    assert "note: prompt and completion" in text and "coloured by L1.attn" in text and "✓ exact" in text
    png = figure_png(sequence_figures(r)["steps-layers"], dpi=40)
    page = render_sequence_html(r, images={"steps-layers": png}, colour_by="embed")
    assert "<b>" not in page and "&lt;b&gt;" in page and 'data-name="note"' in page
    assert 'id="sequence"' in page and 'id="steps"' in page and "data:image/png;base64" in page
    md = render_sequence_markdown(r, image_paths={"steps-layers": "r_files/steps-layers.png"})
    assert (
        "> **Note**: prompt and completion" in md
        and "`' <b>'`" not in md
        and "r_files/steps-layers.png" in md
    )
    assert r._repr_html_().startswith('<div class="tokenlens-report">')
    with pytest.raises(ValueError, match="no component 'L9.mlp'"):
        render_sequence(r, "L9.mlp")


def test_python_errors_are_one_line(tiny_loaded):
    loaded = tiny_loaded("llama")
    cases = [
        (dict(completion=""), "completion is empty"),
        (dict(completion=[]), "completion is empty"),
        (dict(generate=0), "1 or more"),
        (dict(completion=" a", generate=2), "not both"),
        ({}, "give the answer"),
        (dict(completion=" a", target=" Paris"), "drop target"),
        (dict(completion=" a", position=2), "drop position"),
        (dict(completion=" word" * 70), "context of 64"),
        (dict(generate=70), "context of 64"),
        (dict(generate=2, temperature=0.5), "only applies when sampling"),
        (dict(generate=2, sample=True, temperature=0.0), "above 0"),
        (dict(completion=" Paris", vs=" Paris"), "contrast token is the answer's token at step 0"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(TokenlensError, match=expected) as info:
            attribute_sequence(loaded, PROMPT, **kwargs)
        assert "\n" not in str(info.value)
    broken = tiny_loaded("llama")
    with torch.no_grad():
        broken.model.model.norm.weight[0] = float("nan")
    with pytest.raises(TokenlensError, match="NaN or infinite"):
        attribute_sequence(broken, PROMPT, completion=" Paris")
    with pytest.raises(TokenlensError, match="NaN or infinite logits while generating"):
        attribute_sequence(broken, PROMPT, generate=2)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


BAD_CLI = {
    "empty completion": (["--completion", ""], "completion is empty"),
    "generate 0": (["--generate", "0"], "1 or more"),
    "negative generate": (["--generate", "-3"], "1 or more"),
    "completion and generate": (["--completion", " a", "--generate", "2"], "not both"),
    "completion past the context": (["--completion", " word" * 70], "context of 64"),
    "position with completion": (["--completion", " a", "--position", "1"], "drop --position"),
    "position with generate": (["--generate", "2", "--position", "1"], "drop --position"),
    "sample without generate": (["--sample"], "add --generate N"),
    "temperature 0": (["--generate", "2", "--sample", "--temperature", "0"], "above 0"),
    "negative temperature": (["--generate", "2", "--sample", "--temperature", "-1"], "above 0"),
    "target with completion": (["--completion", " a", "--target", " b"], "drop --target"),
    "lens with completion": (["--completion", " a", "--lens"], "--lens is not available"),
    "ablation with generate": (["--generate", "2", "--ablate", "L0.attn"], "causal experiments"),
    "unknown colour component": (["--completion", " a", "--color-by", "L9.mlp"], "no component 'L9.mlp'"),
    "multi-token target with --vs": (["--target", " Parisianism", "--vs", " London"], "has no contrast"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLI))
def test_bad_cli_input_is_one_line_and_exit_2(case, tiny_checkpoint, capsys):
    extra, expected = BAD_CLI[case]
    code, _, err = _cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *extra)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_cli_non_finite_model_is_exit_2(tmp_path, qwen_tokenizer, capsys):
    model = build_tiny("llama")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("inf"))
    model.save_pretrained(tmp_path / "broken")
    qwen_tokenizer.save_pretrained(tmp_path / "broken")
    code, _, err = _cli(
        capsys, "inspect", "--model", str(tmp_path / "broken"), "--prompt", PROMPT, "--completion", " a"
    )
    assert code == 2 and "NaN or infinite" in err and len(err.strip().splitlines()) == 1


def test_cli_multi_token_target_is_its_sequence_logprob(tiny_checkpoint, tmp_path, capsys):
    code, out, err = _cli(
        capsys,
        "inspect",
        "--model",
        str(tiny_checkpoint),
        "--prompt",
        PROMPT,
        "--target",
        " Parisianism",
        "--format",
        "json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["answer"]["source"] == "target" and data["explained"] == "logprob"
    assert [t["token"] for t in data["sequence"]["tokens"]] == [" Paris", "ian", "ism"]
    assert abs(sum(s["explained"]["value"] for s in data["steps"]) - data["sequence"]["logprob"]) < 1e-9
    code, out, _ = _cli(
        capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--target", " Parisianism",
        "--first-token", "--format", "json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["target"]["token"] == " Paris" and "steps" not in json.loads(out)
    for fmt, name in (("html", "a.html"), ("markdown", "a.md"), ("table", "a.txt")):
        out_file = tmp_path / name
        argv = ["--completion", COMPLETION, "--format", fmt, "--out", str(out_file), "--heads"]
        code, _, err = _cli(capsys, "inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, *argv)
        assert code == 0, err
        assert "course" in out_file.read_text()
    assert (tmp_path / "a_files" / "steps-layers.png").exists()
