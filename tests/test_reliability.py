"""Reliability of inspect, diff and check: exit codes that never read a crash as a verdict, text that is not
UTF-8, report folders that are not overwritten, API inputs that are not ids, no gradients left behind, and
splits of 16-bit models that are exact against an independent float32 readout of their own stream."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny

from tokenlens.attribution.direct import attribute
from tokenlens.cli import main
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import spec_for_model

PROMPT = "The capital of France is"
BAD_UTF8 = "The capital \udcff of"  # what Python makes of an invalid byte in a command-line argument


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- exit codes ------------------------------------------------------------------------------------------


def test_an_internal_error_in_check_is_not_a_verdict(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import tokenlens.diff as diff_package

    probes = tmp_path / "p.jsonl"
    probes.write_text(json.dumps({"prompt": PROMPT, "expect": "unchanged"}) + "\n")

    def explode(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(diff_package, "diff", explode)
    code = main(
        ["check", "--base", str(tiny_checkpoint), "--tuned", str(tiny_checkpoint), "--probes", str(probes)]
    )
    assert code == 3  # 1 would read as "probes violated"
    assert "internal error: RuntimeError: a bug" in one_line_error(capsys)


def test_out_of_memory_is_an_environment_error(tiny_checkpoint, monkeypatch, capsys):
    import tokenlens.attribution.direct as direct

    def explode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(direct, "attribute", explode)
    assert main(["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT]) == 2
    assert "out of memory" in one_line_error(capsys)


def test_a_rust_panic_is_one_line_not_a_traceback(tiny_checkpoint, monkeypatch, capsys):
    import tokenlens.attribution.direct as direct

    class PanicException(BaseException):  # what pyo3 extensions (tokenizers, safetensors) raise
        pass

    def explode(*args, **kwargs):
        raise PanicException("called `Option::unwrap()` on a `None` value")

    monkeypatch.setattr(direct, "attribute", explode)
    assert main(["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT]) == 3
    assert "internal error: PanicException" in one_line_error(capsys)


def test_sigterm_is_143_for_every_subcommand(tiny_checkpoint, monkeypatch, capsys):
    import os
    import signal
    import time

    import tokenlens.attribution.direct as direct

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an exception")

    monkeypatch.setattr(direct, "attribute", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT]) == 143
    assert one_line_error(capsys) == "tokenlens: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


# --- text that is not UTF-8 -------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--prompt", "--target", "--vs", "--patch"])
def test_inspect_refuses_invalid_utf8_before_loading(flag, capsys):
    args = {"--prompt": PROMPT, flag: BAD_UTF8}
    argv = ["inspect", "--model", "/no/such/model"] + [item for pair in args.items() for item in pair]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "not valid UTF-8" in err and "/no/such/model" not in err  # refused before any model loads


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--neurons", "-1"], "--neurons"),
        (["--estimate", "-2"], "--estimate"),
        (["--ablate", "L0", "--metric", "logit_diff"], "needs a contrast token"),
        (["--metric", "logit"], "need one of"),
        (["--top-k", "0"], "--top-k"),
    ],
)
def test_inspect_options_are_checked_before_loading(capsys, extra, fragment):
    assert main(["inspect", "--model", "/no/such/model", "--prompt", PROMPT, *extra]) == 2
    err = one_line_error(capsys)
    assert fragment in err and "/no/such/model" not in err


def test_diff_refuses_invalid_utf8_before_loading(capsys):
    assert main(["diff", "--tuned", "/no/such/model", "--prompt", BAD_UTF8]) == 2
    assert "not valid UTF-8" in one_line_error(capsys)
    assert main(["diff", "--tuned", "/no/such/model", "--prompt", PROMPT, "--target", BAD_UTF8]) == 2
    assert "not valid UTF-8" in one_line_error(capsys)


def test_api_refuses_surrogates_and_non_text(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    with pytest.raises(TokenlensError, match="prompt is not valid UTF-8"):
        attribute(loaded, BAD_UTF8)
    with pytest.raises(TokenlensError, match="target is not valid UTF-8"):
        attribute(loaded, PROMPT, target=" \ud800")


# --- API inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "options", "fragment"),
    [
        (b"The capital", {}, "not bytes"),
        ([1.5, 2.0], {}, "must be integers"),
        ([True, 3], {}, "boolean"),
        (torch.tensor([True, False]), {}, "boolean"),
        (PROMPT, {"top_k": 0}, "top_k"),
        (PROMPT, {"top_k": -3}, "top_k"),
        (PROMPT, {"neurons": 1.5}, "neurons"),
    ],
)
def test_api_refuses_what_is_not_an_id_or_a_count(tiny_loaded, prompt, options, fragment):
    with pytest.raises(TokenlensError, match=fragment) as exc:
        attribute(tiny_loaded("qwen3-tied-gqa"), prompt, **options)
    assert "\n" not in str(exc.value)


def test_integer_ids_of_any_integer_type_are_accepted(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    expected = attribute(loaded, ids).decomposition.as_dict()
    assert attribute(loaded, torch.tensor(ids)).decomposition.as_dict() == expected


def test_finer_splits_leave_no_gradients_on_the_weights(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    attribute(loaded, PROMPT, heads=True, neurons=2, sources=["L1", "L0.H1"])
    with_grad = [name for name, p in loaded.model.named_parameters() if p.grad is not None]
    assert with_grad == []


# --- messages ---------------------------------------------------------------------------------------------


def test_multi_token_targets_are_answers_and_only_inspect_suggests_first_token(tiny_checkpoint, capsys):
    # diff judges a multi-token target as a whole answer (its sequence log-probability): no error, no flag
    args = ["diff", "--base", str(tiny_checkpoint), "--tuned", str(tiny_checkpoint), "--no-causal"]
    assert main([*args, "--prompt", PROMPT, "--target", " Parisianism", "--format", "json"]) == 0
    probe = json.loads(capsys.readouterr().out)["probes"][0]
    assert probe["answer"]["text"] == " Parisianism" and probe["answer"]["gain"] == pytest.approx(0, abs=1e-9)
    # inspect explains a multi-token target as a whole answer too, but a contrast must be one token: there the
    # message names the flag inspect has
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--target", " Paris"]
    assert main([*argv, "--vs", " Parisianism"]) == 2
    err = one_line_error(capsys)
    assert "3 tokens" in err and "--first-token explains its first token" in err


def test_messages_name_settings_as_the_reader_types_them(tiny_loaded, tiny_checkpoint, capsys):
    loaded = tiny_loaded("qwen3-tied-gqa")
    with pytest.raises(TokenlensError) as exc:  # Python: the parameter
        attribute(loaded, PROMPT, target=" London", vs=" London")
    assert "choose another vs" in str(exc.value) and "--vs" not in str(exc.value)
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--target", " London"]
    assert main([*argv, "--vs", " London"]) == 2  # the command line: the flag
    assert "choose another --vs" in one_line_error(capsys)
    from tokenlens.models.loading import load

    with pytest.raises(TokenlensError, match="use device=cpu"):
        load(str(tiny_checkpoint), device="cuda")


def test_a_full_disk_while_writing_a_report_keeps_the_previous_file(
    tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    import errno
    import os

    out = tmp_path / "report.json"
    out.write_text("the previous report")
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT, "--format", "json"]
    assert main([*argv, "--out", str(out), "--force"]) == 2
    err = one_line_error(capsys)
    assert f"could not write {out}: No space left on device; the previous file there is intact" in err
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left


# --- Markdown figure folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["inspect", "diff"])
def test_markdown_figures_folder_is_not_overwritten_without_force(tiny_checkpoint, tmp_path, capsys, command):
    out = tmp_path / "report.md"
    figures = tmp_path / "report_files"
    figures.mkdir()
    mine = figures / "waterfall.png"
    mine.write_bytes(b"the user's own picture")
    if command == "inspect":
        argv = ["inspect", "--model", str(tiny_checkpoint), "--prompt", PROMPT]
    else:
        argv = ["diff", "--base", str(tiny_checkpoint), "--tuned", str(tiny_checkpoint), "--prompt", PROMPT]
        argv.append("--no-causal")
    argv += ["--format", "md", "--out", str(out)]
    assert main(argv) == 2
    assert "report_files exists" in one_line_error(capsys)
    assert mine.read_bytes() == b"the user's own picture" and not out.exists()
    other = figures / "notes.txt"
    other.write_text("keep me")
    assert main([*argv, "--force"]) == 0
    assert out.is_file() and other.read_text() == "keep me"


# --- log-probabilities and 16-bit models ------------------------------------------------------------------


def _independent_readout(model, ids: torch.Tensor, target: int) -> tuple[float, float, float]:
    """The target's logit read off the real final stream in float64 (a hook of this test's own), the model's
    own logit, and the sum ``A = Σ_i |u_i g_i h_i| s`` that bounds the rounding of a 16-bit readout."""
    seen = {}
    handle = model.model.norm.register_forward_pre_hook(lambda _m, inputs: seen.update(h=inputs[0]))
    try:
        with torch.no_grad():
            own = float(model(ids).logits[0, -1, target].double())
    finally:
        handle.remove()
    h = seen["h"][0, -1].double()
    s = torch.rsqrt(h.pow(2).mean() + model.model.norm.variance_epsilon)
    unembed = model.lm_head.weight[target].detach().double() * model.model.norm.weight.detach().double()
    terms = unembed * h * s
    return float(terms.sum()), own, float(terms.abs().sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_split_is_exact_against_its_own_stream(qwen_tokenizer, dtype):
    model = build_tiny("qwen3-untied-mha").to(dtype)
    loaded = LoadedModel(model, qwen_tokenizer, spec_for_model(model), ref="tiny", source="test")
    result = attribute(loaded, PROMPT, heads=True)
    d = result.decomposition
    ids = torch.tensor([qwen_tokenizer(PROMPT)["input_ids"]])
    readout, own, spread = _independent_readout(model, ids, result.target.id)
    assert d.exact and d.stream_error == 0.0
    assert d.total == pytest.approx(readout, abs=1e-4 * max(1.0, abs(readout)))
    assert d.model_value == own  # the model's own 16-bit logit, reported beside
    eps = torch.finfo(dtype).eps  # the readout rounds the normalised stream, the product and the logit
    assert abs(d.model_value - d.logit) <= eps * (abs(d.logit) + 2 * spread)
    # each layer's two increments sum to the change of HF's own hidden states across the layer
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states  # [i] enters layer i (last: normed)
    head_row = model.lm_head.weight[result.target.id].detach().double()
    unembed = head_row * model.model.norm.weight.detach().double()
    terms = d.as_dict()
    for i in range(len(states) - 2):
        change = (states[i + 1][0, -1].double() - states[i][0, -1].double()) @ unembed * d.scale
        assert terms[f"L{i}.attn"] + terms[f"L{i}.mlp"] == pytest.approx(float(change), abs=1e-4)


def test_float32_results_carry_no_model_value(tiny_loaded):
    d = attribute(tiny_loaded("qwen3-tied-gqa"), PROMPT).decomposition
    assert d.model_value is None and d.readout_rounding is None
