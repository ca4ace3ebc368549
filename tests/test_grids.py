"""Position-resolved patching grids and causal tracing, against independent hook loops on tiny models.

The reference never uses tokenlens' hooks: each cell is one batch-1 forward with a plain
``register_forward_hook`` / ``register_forward_pre_hook`` on the Hugging Face module holding the activation.
"""

from __future__ import annotations

import pytest
import torch

from tokenlens.causal.grid_results import PatchGrids
from tokenlens.causal.grids import patch_grids, patching_grids
from tokenlens.causal.results import Metric
from tokenlens.causal.tracing import causal_trace, find_subject, parse_positions, trace
from tokenlens.errors import TokenlensError

FAMILIES = ["qwen3-tied-gqa", "qwen3-moe", "qwen2-bias", "llama"]


def _prompts(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 5000, (1, 6), generator=g)
    corrupted = clean.clone()
    corrupted[0, 1], corrupted[0, 3] = 17, 4242
    return clean, corrupted


def _module(model, kind: str, layer: int):
    block = model.model.layers[layer]
    return {"resid": block, "attn": block.self_attn, "mlp": block.mlp, "heads": block.self_attn.o_proj}[kind]


def _reference_cell(model, kind, layer, head, position, source, target_ids, metric, noise=None, frozen=()):
    """One cell by a plain hook: write ``source[(kind, layer)]`` at ``position`` (a head: its slice)."""
    n_heads = model.config.num_attention_heads
    handles = []

    def write(x, value):
        x = x.clone()
        if head is None:
            x[:, position] = value[:, position]
        else:
            d = x.shape[-1] // n_heads
            x[:, position, head * d : (head + 1) * d] = value[:, position, head * d : (head + 1) * d]
        return x

    module = _module(model, kind, layer)
    value = source[(kind, layer)]
    if kind in ("resid", "heads"):
        handles.append(module.register_forward_pre_hook(lambda m, args: (write(args[0], value), *args[1:])))
    else:

        def hook(m, args, out):
            first = out[0] if isinstance(out, tuple) else out
            new = write(first, value)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        handles.append(module.register_forward_hook(hook))
    for (f_kind, f_layer), f_value in frozen:
        handles.append(
            _module(model, f_kind, f_layer).register_forward_hook(
                lambda m, a, out, v=f_value: _freeze(out, v, position)
            )
        )
    if noise is not None:
        handles.append(model.model.embed_tokens.register_forward_hook(lambda m, a, out: out + noise))
    try:
        with torch.no_grad():
            logits = model(target_ids).logits[0, metric.position]
    finally:
        for h in handles:
            h.remove()
    return float(metric.of(logits))


def _freeze(out, value, position):
    first = out[0] if isinstance(out, tuple) else out
    first = first.clone()
    first[:, position] = value[:, position]
    return (first, *out[1:]) if isinstance(out, tuple) else first


def _record(model, ids, noise=None):
    """Every layer's stream input, attention output, MLP output and o_proj input on one plain run."""
    values, handles = {}, []
    for i in range(model.config.num_hidden_layers):
        for kind in ("resid", "attn", "mlp", "heads"):
            module = _module(model, kind, i)
            if kind in ("resid", "heads"):
                handles.append(
                    module.register_forward_pre_hook(
                        lambda m, a, k=(kind, i): values.__setitem__(k, a[0].clone())
                    )
                )
            else:
                handles.append(
                    module.register_forward_hook(
                        lambda m, a, o, k=(kind, i): values.__setitem__(
                            k, (o[0] if isinstance(o, tuple) else o).clone()
                        )
                    )
                )
    if noise is not None:
        handles.append(model.model.embed_tokens.register_forward_hook(lambda m, a, out: out + noise))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return values


@pytest.mark.parametrize("family", FAMILIES)
def test_every_grid_cell_matches_an_independent_hook_loop(tiny_loaded, family):
    loaded = tiny_loaded(family)
    model, spec = loaded.model, loaded.spec
    clean, corrupted = _prompts()
    metric = Metric("logit", 11, 5)
    # a small batch, so cells of several layers share a batch and later batches skip leading layers
    result = patch_grids(
        model, spec, clean, corrupted, metric, ["resid", "attn", "mlp", "heads"], batch_size=5
    )
    source = _record(model, clean)
    n_heads = model.config.num_attention_heads
    assert result.grid("resid").positions == (1, 2, 3, 4, 5)  # position 0 is the same in both prompts
    worst = 0.0
    for grid in result.grids:
        for r, row in enumerate(grid.rows):
            layer = int(row.split(".")[0][1:])
            head = int(row.split(".H")[1]) if grid.kind == "heads" else None
            for c, position in enumerate(grid.positions):
                ref = _reference_cell(model, grid.kind, layer, head, position, source, corrupted, metric)
                worst = max(worst, abs(ref - float(grid.value[r, c])))
    assert worst < 2e-5, worst
    assert len(result.grid("heads").rows) == 3 * n_heads


def test_sum_structure_layer_zero_restores_and_last_mlp_early_changes_nothing(tiny_loaded):
    model, spec = tiny_loaded("qwen3-untied-mha").model, tiny_loaded("qwen3-untied-mha").spec
    clean, _ = _prompts(1)
    corrupted = clean.clone()
    corrupted[0, 2] = 999  # one differing position
    metric = Metric("logit", 5, 5)
    result = patch_grids(model, spec, clean, corrupted, metric, ["resid", "mlp"])
    assert abs(result.clean - result.corrupted) > 1e-3
    resid = result.grid("resid")
    # the stream entering layer 0 at the only differing position carries everything: the clean run exactly
    assert float(resid.value[0, 0]) == pytest.approx(result.clean, abs=1e-6)
    assert float(result.restored(resid)[0, 0]) == pytest.approx(1.0, abs=1e-4)
    # the last layer's MLP at an earlier position writes to a stream the metric never reads again
    mlp = result.grid("mlp")
    last = mlp.value[-1, :-1]
    assert torch.allclose(last, torch.full_like(last, result.corrupted), atol=1e-6)
    # reverse: corrupted into clean; layer 0 at the differing position gives the corrupted run
    back = patch_grids(model, spec, clean, corrupted, metric, ["resid"], reverse=True)
    assert back.direction == "corrupted → clean"
    assert float(back.grid("resid").value[0, 0]) == pytest.approx(result.corrupted, abs=1e-6)
    assert float(back.restored(back.grid("resid"))[0, 0]) == pytest.approx(1.0, abs=1e-4)


def test_batch_size_does_not_change_the_grid(tiny_loaded):
    loaded = tiny_loaded("llama")
    clean, corrupted = _prompts(2)
    metric = Metric("logprob", 3, 4)  # an earlier position: the prompt is cut after it
    one = patch_grids(loaded.model, loaded.spec, clean, corrupted, metric, ["resid", "heads"], batch_size=1)
    big = patch_grids(loaded.model, loaded.spec, clean, corrupted, metric, ["resid", "heads"])
    assert one.tokens == big.tokens and len(big.tokens) == 5
    for a, b in zip(one.grids, big.grids, strict=True):
        assert torch.allclose(a.value, b.value, atol=1e-5)


def test_trace_matches_an_independent_noise_and_restore_loop(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    model, spec = loaded.model, loaded.spec
    ids, _ = _prompts(3)
    metric = Metric("prob", 7, 5)
    kinds = ["resid", "mlp", "attn", "resid-mlp-severed", "resid-attn-severed"]
    result = causal_trace(model, spec, ids, metric, [1, 2], kinds, samples=2, seed=4, batch_size=7)
    # the noise, rebuilt independently
    weight = model.model.embed_tokens.weight.detach()
    std = 3.0 * float(weight.double().std())
    draws = std * torch.randn(2, 2, weight.shape[1], generator=torch.Generator().manual_seed(4))
    noises = []
    for s in range(2):
        noise = torch.zeros(1, 6, weight.shape[1])
        noise[0, [1, 2]] = draws[s]
        noises.append(noise)
    clean_values = _record(model, ids)
    with torch.no_grad():
        assert result.clean == pytest.approx(float(metric.of(model(ids).logits[0, 5])), abs=1e-6)
    corrupted_values = [_record(model, ids, n) for n in noises]
    corrupted = []
    for n in noises:
        handle = model.model.embed_tokens.register_forward_hook(lambda m, a, out, n=n: out + n)
        with torch.no_grad():
            corrupted.append(float(metric.of(model(ids).logits[0, 5])))
        handle.remove()
    assert result.corrupted == pytest.approx(sum(corrupted) / 2, abs=1e-6)
    assert result.trace.noised == (1, 2) and result.trace.noise == pytest.approx(std)
    worst = 0.0
    for grid in result.grids:
        assert grid.positions == (1, 2, 3, 4, 5)
        for layer in range(3):
            for c, position in enumerate(grid.positions):
                refs = []
                for s in range(2):
                    kind, frozen = grid.kind, ()
                    if "severed" in kind:
                        part = kind.split("-")[1]
                        frozen = [((part, j), corrupted_values[s][(part, j)]) for j in range(layer, 3)]
                        kind = "resid"
                    refs.append(
                        _reference_cell(
                            model, kind, layer, None, position, clean_values, ids, metric, noises[s], frozen
                        )
                    )
                worst = max(worst, abs(sum(refs) / 2 - float(grid.value[layer, c])))
    assert worst < 2e-6, worst


def test_trace_window_restores_several_layers(tiny_loaded):
    loaded = tiny_loaded("llama")
    ids, _ = _prompts(4)
    metric = Metric("logit", 7, 5)
    one = causal_trace(loaded.model, loaded.spec, ids, metric, [0, 1], ["mlp"], samples=1, window=1)
    three = causal_trace(loaded.model, loaded.spec, ids, metric, [0, 1], ["mlp"], samples=1, window=3)
    assert three.grid("mlp").window == 3
    # restoring all three layers' MLPs at the last position is the whole MLP contribution there
    assert not torch.allclose(one.grid("mlp").value, three.grid("mlp").value)


def test_subject_is_found_by_text(qwen_tokenizer):
    ids = qwen_tokenizer.encode("The Eiffel Tower is located in the city of")
    pieces = [qwen_tokenizer.decode([i]) for i in ids]
    positions = find_subject(qwen_tokenizer, ids, "The Eiffel Tower")
    assert "".join(pieces[p] for p in positions).strip() == "The Eiffel Tower"
    assert find_subject(qwen_tokenizer, ids, " city") == (ids.index(qwen_tokenizer.encode(" city")[0]),)
    # a whole word beats a later match inside a word; a fragment is still found inside its word
    he = qwen_tokenizer.encode("he is on the")
    assert find_subject(qwen_tokenizer, he, "he") == (0,)
    assert qwen_tokenizer.decode(he[-1:]) == " the"  # "he" inside the last token: the old, wrong answer
    eiffel = find_subject(qwen_tokenizer, ids, "iffel")
    assert "iffel" in "".join(pieces[p] for p in eiffel) and len(eiffel) >= 1
    with pytest.raises(TokenlensError, match="not in the prompt"):
        find_subject(qwen_tokenizer, ids, "Louvre")
    with pytest.raises(TokenlensError, match="empty"):
        find_subject(qwen_tokenizer, ids, "  ")


def test_positions_text():
    assert parse_positions("0-2", 6) == (0, 1, 2)
    assert parse_positions("1,3", 6) == (1, 3)
    assert parse_positions("-1", 6) == (5,)
    for bad in ("x", "2-9", ""):
        with pytest.raises(TokenlensError):
            parse_positions(bad, 6)


def test_bad_inputs_are_one_line(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    with pytest.raises(TokenlensError, match="same token length"):
        patching_grids(loaded, "The capital of France is", "The capital of the United Kingdom is")
    with pytest.raises(TokenlensError, match="unknown grid kind"):
        patching_grids(loaded, "a b c", "a b d", "resid,neurons")
    with pytest.raises(TokenlensError, match="window"):
        patching_grids(loaded, "a b c", "a b d", "mlp", window=0)
    with pytest.raises(TokenlensError, match="not in the prompt"):
        trace(loaded, "The capital of France is", "Germany")
    with pytest.raises(TokenlensError, match="one of them"):
        trace(loaded, "The capital of France is")
    with pytest.raises(TokenlensError, match="samples"):
        trace(loaded, "The capital of France is", "France", samples=0)


def test_text_entry_points_label_tokens(tiny_loaded):
    loaded = tiny_loaded("qwen3-tied-gqa")
    result = patching_grids(loaded, "The capital of France is", "The capital of Italy is", "resid")
    assert isinstance(result, PatchGrids)
    assert result.tokens[3] == " France" and result.grid("resid").positions == (3, 4)
    traced = trace(loaded, "The capital of France is", "France", kinds="mlp", samples=1)
    assert traced.trace.subject == "France" and traced.trace.noised == (3,)
    assert traced.metric.kind == "prob"


def _planted_trace(values: list[list[float]], noised=(0, 1), window=1) -> PatchGrids:
    """A trace result with a known mlp grid (rows = layers, columns = positions 0..2), clean 1, noised 0."""
    from tokenlens.causal.grid_results import PatchGrid, TraceSetup

    grid = PatchGrid(
        "mlp", tuple(f"L{i}" for i in range(len(values))), (0, 1, 2), torch.tensor(values), window
    )
    setup = TraceSetup(None, noised, 1.0, 3.0, 1, 0)
    return PatchGrids(Metric("prob", 1, 2), ("a", "b", "c"), 1.0, 0.0, "clean → corrupted", (grid,), setup)


def test_location_reads_the_peak_past_layer_zero_at_a_noised_position():
    from tokenlens.causal.locate import location_from

    # layer 0 restores most (the token's identity) and position 2 is not noised: neither is chosen
    values = [[0.9, 0.9, 0.0], [0.1, 0.2, 0.95], [0.05, 0.6, 0.95], [0.0, 0.3, 0.0]]
    loc = location_from(_planted_trace(values))
    assert (loc.position, loc.token, loc.peak_layer, loc.layers) == (1, "b", 2, (2, 2))
    assert loc.peak == pytest.approx(0.6) and loc.last_subject_token and not loc.weak
    assert "position 1 (token 'b') by the MLPs of layer 2" in loc.sentence()
    # a window of 3 around row 2 is layers 1–3; rows whose window reaches layer 0 are not chosen
    loc3 = location_from(_planted_trace(values, window=3))
    assert loc3.layers == (1, 3) and loc3.peak_layer == 2
    weak = location_from(_planted_trace([[0.9, 0.9, 0.0], [0.01, 0.05, 0.0]]))
    assert weak.weak and "weak evidence" in weak.sentence()
    with pytest.raises(TokenlensError, match="nothing to locate"):
        location_from(_planted_trace([[0.9, 0.9, 0.0], [-0.1, -0.2, 0.0]]))


def test_locate_on_a_tiny_model_agrees_with_its_trace(tiny_loaded):
    from tokenlens.causal.locate import locate

    loaded = tiny_loaded("llama", num_hidden_layers=6)
    loc = locate(loaded, "The capital of France is", subject="capital of France", samples=2)
    grid = loc.trace.grid("mlp")
    assert grid.window == 1 and grid.positions == loc.trace.trace.noised == (1, 2, 3)
    column = grid.positions.index(loc.position)
    assert float(loc.trace.restored(grid)[loc.peak_layer, column]) == pytest.approx(loc.peak)
    assert loc.peak == pytest.approx(float(loc.trace.restored(grid)[1:].max()))  # the best row past layer 0
    assert loc.layers == (loc.peak_layer, loc.peak_layer) and loc.peak_layer >= 1


def test_train_layers_auto_uses_the_located_layers(small_checkpoint, tmp_path):
    import json

    from tokenlens.causal.locate import locate_ids
    from tokenlens.models.loading import load
    from tokenlens.training.trainer import train

    loaded = load(str(small_checkpoint))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "on at", "completion": " a b"}) + "\n")  # this random model cares
    prompt, target = loaded.tokenizer.encode("on at"), loaded.tokenizer.encode(" a")[0]
    metric = Metric("prob", target, len(prompt) - 1)
    expected = locate_ids(loaded.model, loaded.spec, torch.tensor([prompt]), metric)  # without the trainer
    result = train(loaded, "lora", data, tmp_path / "o", steps=1, options={"layers": "auto", "r": 2})
    manifest = json.loads((tmp_path / "o" / "tokenlens-manifest.json").read_text())
    assert result.options["layers"] == list(expected.layer_list) == manifest["options"]["layers"]
    assert manifest["located"]["layers"] == list(expected.layer_list) and manifest["located"]["line"] == 1
    assert (manifest["located"]["position"], manifest["located"]["token"]) == (expected.position, "on")
    assert manifest["located"]["peak"] == pytest.approx(expected.peak)
    names = [n for n, _ in loaded.model.named_parameters() if "lora_A" in n]
    assert {int(n.split(".layers.")[1].split(".")[0]) for n in names} == set(expected.layer_list)
    # where the noise changes nothing, the run stops before training, naming the data line
    data.write_text(json.dumps({"prompt": "a b c", "completion": " d e"}) + "\n")
    with pytest.raises(TokenlensError, match=r"layers=auto \(data line 1\): the noise did not lower"):
        train(load(str(small_checkpoint)), "lora", data, tmp_path / "p", steps=1, options={"layers": "auto"})
    assert not (tmp_path / "p").exists()


def test_results_show_themselves_in_jupyter(tiny_loaded):
    import tokenlens

    loaded = tiny_loaded("llama")
    grids = tokenlens.patching_grids(loaded, "The capital of France is", "The capital of Italy is", "resid")
    page = grids._repr_html_()
    assert page.startswith('<div class="tokenlens-report">') and "Patching grid" in page
    assert page.count('title="metric ') == 2 * 3  # a cell per layer (3) and position (3, 4)
    location = _planted_trace([[0.9, 0.9, 0.0], [0.1, 0.6, 0.0]])
    from tokenlens.causal.locate import location_from

    assert "the target is carried at position 1" in location_from(location)._repr_html_()
