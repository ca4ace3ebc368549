"""Bad prompts, positions and targets: each a one-line TokenlensError naming the problem."""

from __future__ import annotations

import pytest
import torch

from tokenlens.attribution.direct import attribute
from tokenlens.errors import TokenlensError


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("prompt", ["", "   \n"])
def test_empty_prompt(loaded, prompt):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, prompt)
    assert "empty" in one_line(exc)


def test_multi_token_target_is_refused_and_names_the_first_token(loaded):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "The capital of France is", target=" Parisianism")
    message = one_line(exc)
    assert "tokens" in message and "first_token=True" in message and "' Paris'" in message


def test_first_token_opt_in(loaded):
    result = attribute(loaded, "The capital of France is", target=" Parisianism", first_token=True)
    assert result.target.token == " Paris"
    assert result.decomposition.exact


def test_named_target_with_and_without_space_are_different_tokens(loaded):
    spaced = attribute(loaded, "The capital of France is", target=" Paris")
    bare = attribute(loaded, "The capital of France is", target="Paris")
    assert spaced.target.id != bare.target.id
    assert (spaced.target.token, bare.target.token) == (" Paris", "Paris")


def test_target_id(loaded):
    result = attribute(loaded, "Hello", target_id=12095)
    assert result.target.token == " Paris"


@pytest.mark.parametrize("bad", [-1, 151669, 151935, 10**9])
def test_target_id_outside_vocabulary(loaded, bad):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "Hello", target_id=bad)
    assert "outside the vocabulary" in one_line(exc)


@pytest.mark.parametrize("position", [5, 100, -6])
def test_position_outside_prompt(loaded, position):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "The capital of France is", position=position)  # 5 tokens
    assert "outside the prompt of 5 tokens" in one_line(exc)


def test_negative_position_counts_from_the_end(loaded):
    assert attribute(loaded, "The capital of France is", position=-5).position == 0


def test_prompt_longer_than_context(loaded):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "word " * 100)  # the tiny models have a 64-token context
    assert "longer than the model's context of 64" in one_line(exc)


def test_empty_target(loaded):
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "Hi", target="")
    assert "empty" in one_line(exc)


def test_chat_template_wraps_the_prompt(loaded):
    result = attribute(loaded, "Hi", chat=True)
    assert result.tokens[0] == "<|im_start|>"
    assert result.tokens[-1] == "\n" and "assistant" in result.tokens
    assert result.decomposition.exact


def test_nan_in_the_model_is_a_clear_error(tiny_loaded):
    loaded = tiny_loaded("llama")
    with torch.no_grad():
        loaded.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(TokenlensError) as exc:
        attribute(loaded, "Hello there")
    assert "NaN" in one_line(exc)


def test_token_ids_as_the_prompt(loaded):
    ids = loaded.tokenizer("The capital of France is")["input_ids"]
    by_ids = attribute(loaded, ids, target=" Paris")
    by_text = attribute(loaded, "The capital of France is", target=" Paris")
    assert by_ids.token_ids == by_text.token_ids and by_ids.prompt == "The capital of France is"
    assert by_ids.target.logit == pytest.approx(by_text.target.logit)
    for bad, message in (
        ([], "empty"),
        ([5, 999_999], "outside the vocabulary"),
        ([1] * 100, "context of 64"),
    ):
        with pytest.raises(TokenlensError, match=message):
            attribute(loaded, bad)
