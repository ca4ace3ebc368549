"""The logit lens, checked against independent computations.

HF's own ``output_hidden_states`` (a separate plain forward, no hooks) give the stream before each layer; the
last one is after the final norm, so the last depth is checked against the model's output logits instead.
Intermediate depths are checked against a manual decode through the real ``model.norm`` and ``lm_head``
modules, ranks against an independent argsort, and padding rows against a planted head edit.
"""

from __future__ import annotations

import pytest
import torch
from conftest import add_head_bias, count_hooks

from tokenlens.attribution.direct import run_with_capture
from tokenlens.attribution.lens import _decode_depth, accumulated_stream, logit_lens
from tokenlens.errors import TokenlensError
from tokenlens.models.loading import LoadedModel
from tokenlens.models.specs import bare_model

PROMPT = "The capital of France is Paris, and the capital of Italy is"
KINDS = ["qwen3-tied-gqa", "qwen2-bias", "llama-out-bias", "qwen3-moe"]


def plain_forward(model, ids: list[int]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """HF hidden states (each ``(seq, d)``) and logits ``(seq, vocab)`` from a forward without hooks."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states), out.logits[0].float()


def manual_decode(model, hidden: torch.Tensor) -> torch.Tensor:
    """``(seq, vocab)`` logits of a pre-norm stream through the real final-norm and head modules."""
    with torch.no_grad():
        return model.lm_head(model.model.norm(hidden)).float()


def assert_rank_matches_argsort(rank: torch.Tensor, logits: torch.Tensor, target: int, decodable: int):
    """The lens rank equals the target's index in a descending argsort, up to near-ties (1e-5)."""
    for col, row in enumerate(logits[:, :decodable]):
        order = row.argsort(descending=True)
        expected = int((order == target).nonzero()[0, 0])
        near_ties = int(((row - row[target]).abs() < 1e-5).sum()) - 1
        assert abs(int(rank[col]) - expected) <= near_ties


def assert_depth_matches(lens, depth: int, logits: torch.Tensor, decodable: int, columns=None) -> None:
    """One depth of the lens equals an independently computed ``(seq, vocab)`` logits table."""
    if columns is not None:
        logits = logits[columns]
    k = lens.top_ids.shape[-1]
    probs = logits.softmax(-1)
    target = lens.target_id
    torch.testing.assert_close(lens.target_logit[depth], logits[:, target], atol=2e-5, rtol=0)
    torch.testing.assert_close(lens.target_prob[depth], probs[:, target], atol=0, rtol=1e-4)
    assert torch.equal(lens.top_ids[depth], logits[:, :decodable].topk(k).indices)
    torch.testing.assert_close(lens.top_probs[depth], probs.gather(1, lens.top_ids[depth]), atol=0, rtol=1e-4)
    assert_rank_matches_argsort(lens.target_rank[depth], logits, target, decodable)


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_stream_matches_hidden_states(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    model = loaded.model
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    capture, _ = run_with_capture(model, loaded.spec, torch.tensor([ids]), torch.arange(len(ids)))
    stream = accumulated_stream(capture)
    hidden, _ = plain_forward(model, ids)
    n_layers = model.config.num_hidden_layers
    assert stream.shape == (n_layers + 1, len(ids), model.config.hidden_size)
    for depth in range(n_layers):
        torch.testing.assert_close(stream[depth], hidden[depth], atol=1e-5, rtol=0)
    with torch.no_grad():  # HF's last hidden state is after the final norm
        torch.testing.assert_close(model.model.norm(stream[-1]), hidden[-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_last_depth_is_the_model_output(tiny_loaded, kind):
    loaded = tiny_loaded(kind)
    lens = logit_lens(loaded, PROMPT)
    assert count_hooks(loaded.model) == 0  # before HF's output_hidden_states adds recorders of its own
    _, logits = plain_forward(loaded.model, list(lens.token_ids))
    decodable = len(loaded.tokenizer)
    n_layers = loaded.model.config.num_hidden_layers
    assert lens.depths == ("embed",) + tuple(f"L{i}" for i in range(n_layers))
    assert lens.positions.tolist() == list(range(len(lens.token_ids)))
    assert lens.top_ids.shape == (n_layers + 1, len(lens.token_ids), 5)
    assert lens.target_id == int(logits[-1, :decodable].argmax())
    assert int(lens.target_rank[-1, -1]) == 0 and int(lens.top_ids[-1, -1, 0]) == lens.target_id
    assert_depth_matches(lens, -1, logits, decodable)
    assert lens.stream_error < 1e-5
    assert lens.target == loaded.tokenizer.decode([lens.target_id])
    assert lens.top_tokens[-1][-1] == tuple(loaded.tokenizer.decode([i]) for i in lens.top_ids[-1, -1])


@pytest.mark.parametrize("kind", ["qwen3-untied-mha", "qwen2-bias", "qwen3-moe"])
def test_intermediate_depths_match_manual_decode(tiny_loaded, kind):
    """Each depth uses its own norm scale: the real norm module applied to HF's hidden state agrees."""
    loaded = tiny_loaded(kind)
    model = loaded.model
    lens = logit_lens(loaded, PROMPT, target=" Rome", k=4)
    assert lens.target == " Rome" and lens.target_id == loaded.tokenizer(" Rome")["input_ids"][0]
    hidden, _ = plain_forward(model, list(lens.token_ids))
    eps = model.model.norm.variance_epsilon
    for depth in range(model.config.num_hidden_layers):
        assert_depth_matches(lens, depth, manual_decode(model, hidden[depth]), len(loaded.tokenizer))
        own_scale = torch.rsqrt(hidden[depth].pow(2).mean(-1) + eps)
        torch.testing.assert_close(lens.scale[depth], own_scale, atol=0, rtol=1e-5)
    assert lens.target_rank[:-1].gt(0).any()  # a non-trivial rank was checked


def test_padding_rows_never_appear(tiny_loaded):
    """Plant head rows past the tokenizer's ids that are the argmax at every depth and position."""
    loaded = tiny_loaded("qwen3-tied-gqa")
    model = loaded.model
    decodable = len(loaded.tokenizer)
    ids = loaded.tokenizer(PROMPT)["input_ids"]
    hidden, _ = plain_forward(model, ids)
    with torch.no_grad():
        normed = torch.stack([model.model.norm(h) for h in hidden[:-1]] + [hidden[-1]])  # (depth, seq, d)
        points = normed.reshape(-1, normed.shape[-1])  # (depth*seq, d)
        best = (points @ model.lm_head.weight[:decodable].T).max(-1).values  # (depth*seq,)
        rows = (best + 2.0)[:, None] * points / points.pow(2).sum(-1, keepdim=True)
        assert decodable + len(rows) <= model.lm_head.weight.shape[0]
        model.lm_head.weight[decodable : decodable + len(rows)] = rows
    lens = logit_lens(loaded, PROMPT, k=3)
    manual = [manual_decode(model, h) for h in hidden[:-1]] + [plain_forward(model, ids)[1]]
    for depth, logits in enumerate(manual):
        assert bool((logits.argmax(-1) >= decodable).all())  # the planted rows really win everywhere
        assert_depth_matches(lens, depth, logits, decodable)
    assert bool((lens.top_ids < decodable).all())
    assert lens.target_id == int(manual[-1][-1, :decodable].argmax())
    assert int(lens.target_rank[-1, -1]) == 0


def test_head_bias_is_decoded_at_every_depth(tiny_loaded):
    loaded = tiny_loaded("llama")
    model = loaded.model
    add_head_bias(model)
    lens = logit_lens(loaded, PROMPT, target_id=500)
    hidden, logits = plain_forward(model, list(lens.token_ids))
    decodable = len(loaded.tokenizer)
    assert_depth_matches(lens, -1, logits, decodable)
    assert_depth_matches(lens, 1, manual_decode(model, hidden[1]), decodable)


@pytest.mark.parametrize("method", ["lora", "modules_to_save"])
def test_fine_tuned_head_is_decoded_through_its_wrapper(tiny_loaded, method):
    """A PEFT-wrapped head (LoRA, or a trained copy) is used as the model uses it, not its base weight."""
    import peft

    loaded = tiny_loaded("qwen3-untied-mha")
    if method == "lora":
        config = peft.LoraConfig(r=4, target_modules=["lm_head"], init_lora_weights=False)
    else:
        config = peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = peft.get_peft_model(loaded.model, config).eval()
    bare = bare_model(model)
    if method == "modules_to_save":
        with torch.no_grad():
            bare.lm_head.modules_to_save["default"].weight.mul_(-3.0)
    lens = logit_lens(LoadedModel(model, loaded.tokenizer, loaded.spec, ref="peft", source="test"), PROMPT)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([list(lens.token_ids)]), output_hidden_states=True)
    decodable = len(loaded.tokenizer)
    assert_depth_matches(lens, -1, out.logits[0].float(), decodable)
    assert_depth_matches(lens, 1, manual_decode(bare, out.hidden_states[1][0]), decodable)


def test_selected_positions(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    model = loaded.model
    decodable = len(loaded.tokenizer)
    seq = len(loaded.tokenizer(PROMPT)["input_ids"])
    lens = logit_lens(loaded, PROMPT, positions=[-1, 1, 1, 3 - seq])
    hidden, logits = plain_forward(model, list(lens.token_ids))
    columns = [1, 3, seq - 1]
    assert lens.positions.tolist() == columns
    assert lens.target_logit.shape == (4, 3) and len(lens.top_tokens[0]) == 3
    assert_depth_matches(lens, -1, logits, decodable, columns)
    assert_depth_matches(lens, 2, manual_decode(model, hidden[2]), decodable, columns)

    # the default target is the top-1 at the last position even when that position is not shown
    early = logit_lens(loaded, PROMPT, positions=[0, 2])
    assert early.positions.tolist() == [0, 2]
    assert early.target_id == int(logits[-1, :decodable].argmax())
    assert_depth_matches(early, -1, logits, decodable, [0, 2])
    assert_depth_matches(early, 0, manual_decode(model, hidden[0]), decodable, [0, 2])


def test_one_depth_keeps_no_view_of_its_vocabulary_logits():
    """Per-depth results must own their memory, or every depth's ``(pos, vocab)`` logits stay alive."""
    generator = torch.Generator().manual_seed(0)
    h, w_u = torch.randn(3, 8, generator=generator), torch.randn(1000, 8, generator=generator)
    for result in _decode_depth(h, torch.ones(8), 1e-6, w_u.T, None, target_id=7, decodable=990, k=4):
        assert result.untyped_storage().nbytes() == result.numel() * result.element_size()


@pytest.fixture(scope="module")
def qwen3(tiny_loaded):
    return tiny_loaded("qwen3-tied-gqa")


@pytest.mark.parametrize(
    ("prompt", "options", "fragment"),
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        (PROMPT, {"positions": [99]}, "outside the prompt"),
        (PROMPT, {"positions": [0, -99]}, "outside the prompt"),
        (PROMPT, {"positions": []}, "no positions"),
        (PROMPT, {"target": " Rome", "target_id": 3}, "not both"),
        (PROMPT, {"target_id": 151700}, "outside the vocabulary"),
        (PROMPT, {"target": " Parisianism"}, "first_token=True"),
        (PROMPT, {"k": 0}, "at least 1"),
    ],
)
def test_bad_input(qwen3, prompt, options, fragment):
    with pytest.raises(TokenlensError) as exc:
        logit_lens(qwen3, prompt, **options)
    message = str(exc.value)
    assert "\n" not in message and fragment in message
    assert count_hooks(qwen3.model) == 0
