"""Diff and check over whole answers: target answers and greedy continuations, against planted edits.

The planted edit changes one head row of a tiny untied model: row ``X`` gains a direction orthogonal to the
final hidden states at every earlier position, so the logits there are unchanged and greedy decoding can only
change where we chose — at a known step. Every number is checked against plain transformers forward passes
(log_softmax, KL and greedy argmax by hand), and the divergence split against single-model attributions.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import build_tiny

from tokenlens.attribution.direct import attribute
from tokenlens.cli import main
from tokenlens.diff import DiffOptions, ModelPair, diff, load_probes
from tokenlens.diff.check import judge_answer, judge_continuation
from tokenlens.diff.result import Continuations, Probe, TargetAnswer
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model

KIND = "qwen3-untied-mha"
PROMPT = "Once upon a time"
STEP = 2  # the planted divergence: the third generated token
N = 5


def loaded(model, tokenizer, ref: str) -> LoadedModel:
    return LoadedModel(model, tokenizer, spec_for_model(model), ref=ref, source="test")


def pair_of(base, tuned, tokenizer) -> ModelPair:
    return ModelPair(
        base=loaded(base, tokenizer, "base"), tuned=loaded(tuned, tokenizer, "tuned"), toggled=False
    )


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    """Plain transformers: ``(seq, vocab)`` float64 logits of ``ids``."""
    return model(input_ids=torch.tensor([ids])).logits[0].double()


def greedy(model, ids: list[int], steps: int, limit: int) -> list[int]:
    out = list(ids)
    for _ in range(steps):
        out.append(int(logits_of(model, out)[-1, :limit].argmax()))
    return out[len(ids) :]


@torch.no_grad()
def plant(model, ids: list[int], token: int, margin: float = 4.0) -> None:
    """Make ``token`` the top-1 after ``ids`` by adding to its head row a direction orthogonal to the final
    hidden states at every earlier position (whose logits stay as they were)."""
    hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0].double()  # after the final norm
    h, earlier = hidden[-1], hidden[:-1]
    q, _ = torch.linalg.qr(earlier.T)
    v = h - q @ (q.T @ h)
    logits = model.lm_head(hidden[-1:].float())[0].double()
    alpha = (logits.max() - logits[token] + margin) / (v @ h)
    model.lm_head.weight[token] += (alpha * v).float()


@pytest.fixture(scope="module")
def planted(qwen_tokenizer):
    """``(base, tuned, prompt ids, base continuation, planted token)``: greedy decoding diverges at STEP."""
    base = build_tiny(KIND)
    limit = len(qwen_tokenizer)
    ids = qwen_tokenizer(PROMPT)["input_ids"]
    cont = greedy(base, ids, N, limit)
    prefix = ids + cont[:STEP]
    ranked = logits_of(base, prefix)[-1, :limit].argsort(descending=True).tolist()
    token = next(t for t in ranked if t not in cont)  # a token the base continuation never uses
    tuned = copy.deepcopy(base)
    plant(tuned, prefix, token)
    return base, tuned, ids, cont, token


def probe_file(tmp_path, *lines: dict):
    path = tmp_path / "probes.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_continuations_diverge_at_the_planted_step(planted, qwen_tokenizer, tmp_path):
    base, tuned, ids, cont, token = planted
    limit = len(qwen_tokenizer)
    assert greedy(tuned, ids, STEP + 1, limit) == cont[:STEP] + [token]  # the plant, independently
    path = probe_file(tmp_path, {"prompt": PROMPT, "generate": N, "expect": "unchanged"})
    report = diff(pair_of(base, tuned, qwen_tokenizer), load_probes(path), DiffOptions())
    (p,) = report.probes
    answer = p.answer
    assert isinstance(answer, Continuations)
    assert list(answer.base_ids) == cont and answer.divergence == STEP
    assert list(answer.tuned_ids) == greedy(tuned, ids, N, limit) and answer.tuned_ids[STEP] == token
    # per-token KL(base || tuned) along the base continuation, by hand from plain forwards
    full = ids + cont
    lp_b = logits_of(base, full)[len(ids) - 1 : -1].log_softmax(-1)
    lp_t = logits_of(tuned, full)[len(ids) - 1 : -1].log_softmax(-1)
    kl = (lp_b.exp() * (lp_b - lp_t)).sum(-1)
    assert answer.kl == pytest.approx(kl.tolist(), abs=1e-6)
    assert max(answer.kl[:STEP]) < 1e-6 < answer.kl[STEP]  # unchanged logits before the planted step
    # the split at the divergence: logit[tuned token] − logit[base token] on prompt + common continuation
    assert list(p.token_ids) == ids + cont[:STEP] and p.position == len(ids) + STEP - 1
    split = p.split
    assert (split.target_id, split.contrast_id) == (token, cont[STEP])
    assert p.tracked.id == token and p.contrast.id == cont[STEP] and not p.tracked_is_target
    prefix_logits_b, prefix_logits_t = (
        logits_of(base, ids + cont[:STEP])[-1],
        logits_of(tuned, ids + cont[:STEP])[-1],
    )
    assert split.base_value == pytest.approx(
        float(prefix_logits_b[token] - prefix_logits_b[cont[STEP]]), abs=1e-4
    )
    assert split.tuned_value == pytest.approx(
        float(prefix_logits_t[token] - prefix_logits_t[cont[STEP]]), abs=1e-4
    )
    assert split.exact and split.observed > 0
    # only the head row changed: every component is bit-identical, the whole change is readout.head
    assert split.direct.abs().max() == 0
    assert split.as_dict()["readout.head"] == pytest.approx(split.observed, abs=1e-4)
    assert all(c.causal in (None, 0.0) for c in p.components)
    assert p.flip_split is None  # the flip is the split itself
    assert p.verdict.passed is False
    assert p.verdict.reason == (
        f"continuation diverges at token {STEP + 1}: {cont[STEP] and answer.base_tokens[STEP]!r} → "
        f"{answer.tuned_tokens[STEP]!r} (mean KL {answer.mean_kl:.3g})"
    )


def test_divergence_split_equals_single_model_attributions(qwen_tokenizer, tmp_path):
    """An MLP edit in the last layer: the divergence split's values are each model's attributed logit
    difference on the prefix, and each direct term is ``s_B/s_T · tuned term − base term`` (same readout)."""
    base = build_tiny(KIND)
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        down = tuned.model.layers[2].mlp.down_proj.weight
        down += torch.randn(down.shape, generator=generator) * 0.6
    path = probe_file(tmp_path, {"prompt": PROMPT, "generate": N})
    (p,) = diff(pair_of(base, tuned, qwen_tokenizer), load_probes(path), DiffOptions()).probes
    answer = p.answer
    assert answer.divergence is not None, "the edit should change the continuation"
    assert p.verdict.passed is None  # no expect: reported, not judged
    d = answer.divergence
    prefix = list(p.token_ids)
    t, c = answer.tuned_ids[d], answer.base_ids[d]
    att_b = attribute(loaded(base, qwen_tokenizer, "b"), prefix, target_id=t, vs_id=c)
    att_t = attribute(loaded(tuned, qwen_tokenizer, "t"), prefix, target_id=t, vs_id=c)
    split = p.split
    assert split.base_value == pytest.approx(att_b.decomposition.logit, abs=1e-4)
    assert split.tuned_value == pytest.approx(att_t.decomposition.logit, abs=1e-4)
    assert split.total == pytest.approx(split.observed, abs=1e-4) and split.exact
    ratio = att_b.decomposition.scale / att_t.decomposition.scale
    base_terms = dict(zip(att_b.decomposition.names, att_b.decomposition.contributions.tolist(), strict=True))
    tuned_terms = dict(
        zip(att_t.decomposition.names, att_t.decomposition.contributions.tolist(), strict=True)
    )
    for name, direct in zip(split.names, split.direct.tolist(), strict=True):
        assert direct == pytest.approx(ratio * tuned_terms[name] - base_terms[name], abs=1e-4), name
    assert split.as_dict()["L2.mlp"] != 0 and split.as_dict()["L1.mlp"] == 0
    measured = {e.name: e for e in p.components}
    assert measured["L2.mlp"].causal == pytest.approx(split.observed, abs=1e-4)  # the only change, patched in
    assert measured["L0.attn"].causal == 0


ANSWER = " Lyon and Paris"


def test_target_answer_log_prob_gain_and_greedy_judge(qwen_tokenizer, tmp_path):
    """The tuned model is planted to say ANSWER token by token after the prompt (each token's head row pushed
    at its own position, orthogonally to the earlier ones)."""
    base = build_tiny(KIND)
    ids = qwen_tokenizer(PROMPT)["input_ids"]
    answer_ids = qwen_tokenizer(PROMPT + ANSWER)["input_ids"][len(ids) :]
    assert len(answer_ids) > 2
    tuned = copy.deepcopy(base)
    for k, token in enumerate(answer_ids):
        plant(tuned, ids + answer_ids[:k], token)
    assert greedy(tuned, ids, len(answer_ids), len(qwen_tokenizer)) == answer_ids
    text = ANSWER
    path = probe_file(
        tmp_path,
        {"prompt": PROMPT, "target": text, "expect": "changed"},
        {"prompt": PROMPT, "target": text, "expect": "changed", "judge": "greedy"},
    )
    pair = pair_of(base, tuned, qwen_tokenizer)
    logprob, greedy_probe = diff(pair, load_probes(path), DiffOptions(causal=False)).probes
    answer = logprob.answer
    assert isinstance(answer, TargetAnswer) and list(answer.ids) == answer_ids
    full = ids + answer_ids
    index = torch.tensor(answer_ids)[:, None]
    by_hand = [
        float(logits_of(m, full)[len(ids) - 1 : -1].log_softmax(-1).gather(-1, index).sum())
        for m in (base, tuned)
    ]
    assert answer.base_logprob == pytest.approx(by_hand[0], abs=1e-6)
    assert answer.tuned_logprob == pytest.approx(by_hand[1], abs=1e-6)
    assert answer.gain == pytest.approx(by_hand[1] - by_hand[0], abs=1e-6) and answer.gain > 1
    assert logprob.verdict.passed and "gain" in logprob.verdict.reason
    miss = answer.departs("base")
    assert answer.departs("tuned") is None and miss is not None
    assert (
        [t.id for t in answer.base_top]
        == [  # base's own top-1 after each answer prefix, by hand
            int(row[: len(qwen_tokenizer)].argmax()) for row in logits_of(base, full)[len(ids) - 1 : -1]
        ]
    )
    assert greedy_probe.verdict.passed and "tuned greedy reproduces it" in greedy_probe.verdict.reason
    assert logprob.tracked.id == answer_ids[0] and logprob.tracked_is_target  # the split: first answer token
    same = diff(
        pair_of(base, copy.deepcopy(base), qwen_tokenizer), load_probes(path), DiffOptions(causal=False)
    )
    lp_same, greedy_same = same.probes
    assert lp_same.verdict.passed is False and lp_same.answer.gain == 0
    assert greedy_same.verdict.passed is False
    assert f"tuned greedy departs at token {miss + 1}: " in greedy_same.verdict.reason


def test_answer_verdict_wording():
    def score(tokens, top):
        from tokenlens.attribution.result import TokenScore

        return tuple(TokenScore(i, t, 0.0, 0.5) for i, t in zip(range(len(tokens)), top))

    answer = TargetAnswer(
        ids=(0, 1),
        tokens=(" Lyon", " is"),
        base_logprobs=(-5.0, -2.0),
        tuned_logprobs=(-1.0, -0.5),
        base_top=score("ab", (" Paris", " is")),
        tuned_top=score("ab", (" Lyon", " is")),
        kl=(0.3, 0.1),
    )
    answer = TargetAnswer(**{**answer.__dict__, "base_top": tuple(
        type(s)(9, s.token, 0.0, 0.5) if k == 0 else s for k, s in enumerate(answer.base_top))})  # fmt: skip
    assert judge_answer("changed", answer).reason == (
        "target ' Lyon is' (2 tokens): log p -7 → -1.5 nats, gain +5.5 >= +0.1; tuned greedy reproduces it"
    )
    assert judge_answer("changed", answer, min_gain=6.0).passed is False
    assert judge_answer("unchanged", answer).reason.startswith(
        "target ' Lyon is' (2 tokens): greedy answer changed: tuned greedy reproduces it "
        "(base greedy departs at token 1"
    )
    cont = Continuations(
        3, (1, 2, 3), ("a", " b", " c"), (1, 2, 3), ("a", " b", " c"), (0.0, 0.01, 0.02), None
    )
    assert (
        judge_continuation("unchanged", cont).reason
        == "continuation unchanged for 3 tokens, mean KL 0.01 <= 0.05"
    )
    assert judge_continuation("unchanged", cont, max_kl=0.001).passed is False


def test_check_exit_codes_for_answer_probes(planted, qwen_tokenizer, tmp_path, capsys):
    base, tuned, ids, cont, token = planted
    for name, model in (("base", base), ("tuned", tuned)):
        model.save_pretrained(tmp_path / name)
        qwen_tokenizer.save_pretrained(tmp_path / name)
    pair = ["--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned"), "--no-causal"]
    short = probe_file(tmp_path, {"prompt": PROMPT, "generate": STEP, "expect": "unchanged"})
    assert main(["check", *pair, "--probes", str(short)]) == 0
    assert (
        f"PASS line 1 [unchanged] {PROMPT!r}: continuation unchanged for {STEP} tokens, mean KL"
        in capsys.readouterr().out
    )
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": PROMPT, "generate": N, "expect": "unchanged"}) + "\n")
    assert main(["check", *pair, "--probes", str(long)]) == 1
    out = capsys.readouterr().out
    b, t = qwen_tokenizer.decode([cont[STEP]]), qwen_tokenizer.decode([token])
    assert (
        f"FAIL line 1 [unchanged] {PROMPT!r}: continuation diverges at token {STEP + 1}: "
        f"{b!r} → {t!r} (mean KL " in out
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"prompt": "x", "generate": 0}, '"generate" must be a number of tokens, 1 or more, not 0'),
        ({"prompt": "x", "generate": True}, '"generate" must be a number of tokens'),
        ({"prompt": "x", "generate": 3, "target": " y"}, 'give it or a "target", not both'),
        ({"prompt": "x", "judge": "greedy"}, '"judge" says how a "target" answer is judged'),
        ({"prompt": "x", "target": " y z", "judge": "best"}, '"judge" must be "logprob" or "greedy"'),
        ({"prompt": "x", "generate": 2, "position": 0}, 'drop "position"'),
    ],
)
def test_bad_answer_probe_lines(tmp_path, line, message):
    with pytest.raises(TokenlensError, match=message.replace("(", r"\(")):
        load_probes(probe_file(tmp_path, {"prompt": "fine"}, line))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"prompt": PROMPT, "target": " a" * 80, "expect": "changed"},
            "line 1: the prompt (4 tokens) and the target",
        ),
        (
            {"prompt": PROMPT, "generate": 100, "expect": "unchanged"},
            "and the continuation (100 tokens) run past",
        ),
        ({"prompt": PROMPT, "generate": 0}, '"generate" must be a number of tokens'),
    ],
)
def test_bad_answer_probes_are_one_line_exit_2(tiny_checkpoint, tmp_path, capsys, line, message):
    path = probe_file(tmp_path, line)
    args = ["check", "--base", str(tiny_checkpoint), "--tuned", str(tiny_checkpoint), "--no-causal"]
    assert main([*args, "--probes", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_probe_parsing_keeps_answer_fields(tmp_path):
    (probe,) = load_probes(
        probe_file(tmp_path, {"prompt": "x", "target": " a b", "judge": "greedy", "expect": "changed"})
    )
    assert probe == Probe(prompt="x", target=" a b", expect="changed", line=1, judge="greedy")
    (probe,) = load_probes(probe_file(tmp_path, {"prompt": "x", "generate": 4}))
    assert probe.generate == 4 and probe.target is None


def test_every_view_shows_the_answers(planted, qwen_tokenizer, tmp_path):
    from tokenlens.report.diff_html import render_diff_html
    from tokenlens.report.diff_json import SCHEMA_VERSION, diff_to_dict
    from tokenlens.report.diff_markdown import render_diff_markdown
    from tokenlens.report.diff_terminal import render_diff
    from tokenlens.report.kit.terminal import renderables_to_text

    base, tuned, ids, cont, token = planted
    path = probe_file(
        tmp_path,
        {"prompt": PROMPT, "generate": N, "expect": "unchanged"},
        {"prompt": PROMPT, "target": " <b>Lyon</b> | x", "expect": "changed"},
    )
    report = diff(pair_of(base, tuned, qwen_tokenizer), load_probes(path), DiffOptions(causal=False))
    gen, target = report.probes
    data = json.loads(json.dumps(diff_to_dict(report), allow_nan=False))
    assert data["schema"] == SCHEMA_VERSION == 4
    g, t = data["probes"]
    assert g["generate"] == N and g["answer"]["kind"] == "generate" and g["answer"]["divergence"] == STEP
    assert [s["id"] for s in g["answer"]["base"]] == cont and g["contrast"]["id"] == cont[STEP]
    assert g["split"]["contrast_id"] == cont[STEP] and g["flip_split"] is None
    assert g["answer"]["mean_kl"] == pytest.approx(gen.answer.mean_kl)
    assert t["answer"]["kind"] == "target" and t["answer"]["gain"] == pytest.approx(target.answer.gain)
    assert [s["id"] for s in t["answer"]["tokens"]] == list(target.answer.ids)
    base_token, tuned_token = gen.answer.base_tokens[STEP], gen.answer.tuned_tokens[STEP]
    text = renderables_to_text([render_diff(report)])
    assert "Greedy continuations" in text and f"diverge at token {STEP + 1}: base {base_token!r}" in text
    assert (
        f"logit[{tuned_token!r}] − logit[{base_token!r}]" in text and "Target answer, token by token" in text
    )
    md = render_diff_markdown(report)
    assert (
        "**base continuation**" in md and "⇄ diverge" in md and "**Target answer** `' <b>Lyon</b> | x'`" in md
    )
    html = render_diff_html(report, figures=False)
    assert 'id="probe-1-answer"' in html and 'id="probe-2-answer"' in html
    assert "<b>Lyon" not in html and "&lt;b&gt;Lyon" in html  # untrusted token text escaped


def test_min_gain_above_one_is_a_log_probability_gain_for_answers():
    """A whole answer's gain is in nats, so ``--min-gain 2`` is meaningful there (it was refused as > 1)."""
    from tokenlens.diff.check import check_thresholds, judge
    from tokenlens.errors import TokenlensError

    check_thresholds(2.0, 0.05)
    kwargs = dict(flipped=False, target_top=False, kl=0.0, min_gain=2.0)
    assert judge("changed", prob_gain=2.5, **kwargs).passed
    assert not judge("changed", prob_gain=1.5, **kwargs).passed
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(TokenlensError, match="gain above 0"):
            check_thresholds(bad, 0.05)
