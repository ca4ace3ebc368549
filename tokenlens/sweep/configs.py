"""The sweep's configurations: one registry record per point in the post-training menu that the map compares.

A configuration is a trainer method plus the options that place it (LoRA on the first or last third of the
layers, on attention or MLP only; ``embeddings`` on the rows the task needs). Options that depend on the
model or the task are computed from :class:`SweepFacts` (the layer count, whether the attention has
``q_norm``/``k_norm``, the token ids of the task), so one record serves every model.

Some configurations train with the built-in preserve set (``preserve``: the trainer's KL(base ‖ tuned)
term over ordinary text, weight 1), some on the layers a causal trace of the first training example locates
(``layers=auto``), and ``rank-one`` is the closed-form ROME-style edit of the located layer.

``--methods`` names configurations or methods; a method name selects all of its configurations
(``lora`` → every ``lora-…`` configuration). Every configuration trains with its
method's default learning rate (``METHODS[name].lr``) unless the sweep's learning-rate search replaces it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError, option
from tokenlens.options import AUTO
from tokenlens.training.methods import METHODS

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class SweepFacts:
    """What a configuration's options may depend on.

    Attributes:
        n_layers: Decoder layers of the base model.
        qk_norm: The attention has ``q_norm``/``k_norm`` (Qwen3); otherwise ``attention`` uses (IA)³.
        token_ids: Target tokens of the intended probes plus the first learned token of every training
            example, sorted (the rows ``embeddings`` trains).
    """

    n_layers: int
    qk_norm: bool
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SweepConfig:
    """One configuration the sweep trains.

    Attributes:
        name: Its name in ``--methods`` and the map (``lora-early``).
        method: The trainer method (a key of ``METHODS``).
        summary: One line: what it trains.
        options: ``options(facts) -> dict`` the method's options for this model and task.
        preserve: The trainer's preserve file (``"default"``: the built-in set), or ``None``.
    """

    name: str
    method: str
    summary: str
    options: Callable[[SweepFacts], dict[str, Any]]
    preserve: str | None = None

    @property
    def lr(self) -> float:
        """The method's default learning rate."""
        return METHODS[self.method].lr


def third(n_layers: int) -> int:
    """Layers in a third of the stack (rounded up, at least one)."""
    return max(1, math.ceil(n_layers / 3))


def _none(_: SweepFacts) -> dict[str, Any]:
    return {}


CONFIGS: dict[str, SweepConfig] = {
    c.name: c
    for c in (
        SweepConfig(
            "lora-early",
            "lora",
            "LoRA on every linear of the first third of the layers",
            lambda f: {"layers": list(range(third(f.n_layers)))},
        ),
        SweepConfig(
            "lora-late",
            "lora",
            "LoRA on every linear of the last third of the layers",
            lambda f: {"layers": list(range(f.n_layers - third(f.n_layers), f.n_layers))},
        ),
        SweepConfig(
            "lora-attn", "lora", "LoRA on q, k, v, o of every layer", lambda f: {"target_modules": ATTN}
        ),
        SweepConfig(
            "lora-mlp", "lora", "LoRA on gate, up, down of every layer", lambda f: {"target_modules": MLP}
        ),
        SweepConfig(
            "lora-mlp-preserve",
            "lora",
            "LoRA on gate, up, down of every layer, with the built-in preserve set's KL term",
            lambda f: {"target_modules": MLP},
            preserve="default",
        ),
        SweepConfig(
            "lora-located",
            "lora",
            "LoRA on gate, up, down of the layers a causal trace locates",
            lambda f: {"target_modules": MLP, "layers": AUTO},
        ),
        SweepConfig(
            "lora-located-preserve",
            "lora",
            "LoRA on the located layers' MLPs, with the built-in preserve set's KL term",
            lambda f: {"target_modules": MLP, "layers": AUTO},
            preserve="default",
        ),
        SweepConfig(
            "rank-one",
            "rank-one",
            "closed-form rank-one edit of the located layer's down_proj at the subject",
            _none,
        ),
        SweepConfig("head", "head", "the output head only (untied)", _none),
        SweepConfig("bias", "bias", "added biases on o_proj and down_proj", _none),
        SweepConfig(
            "embeddings",
            "embeddings",
            "the embedding rows of the task's target and first completion tokens",
            lambda f: {"token_ids": list(f.token_ids)},
        ),
        SweepConfig(
            "attention",
            "attention",
            "attention-score reweighting (q_norm/k_norm scales, else (IA)3 on keys/values)",
            lambda f: {"kind": "norm" if f.qk_norm else "ia3"},
        ),
        SweepConfig("adapter", "adapter", "bottleneck adapters on every MLP output", _none),
        SweepConfig("prompt", "prompt", "8 trainable virtual tokens", _none),
        SweepConfig("rope", "rope", "learnable rotary frequencies", _none),
        SweepConfig("full", "full", "every weight", _none),
    )
}

DEFAULT = ("lora-early", "lora-late", "head", "bias", "embeddings", "attention", "adapter", "prompt")
"""The default sweep: LoRA in two placements and one configuration of each other cheap method."""

QUICK = ("lora-early", "head", "bias", "prompt")
"""``--quick``: a first look in a few minutes."""


def select_configs(names: Sequence[str]) -> tuple[SweepConfig, ...]:
    """The configurations ``names`` selects, in registry order, each once.

    A name is a configuration (``lora-early``) or a method (``lora``: all of its configurations).

    Raises:
        TokenlensError: An empty selection or an unknown name (with the closest known names).
    """
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip()
        if name in CONFIGS:
            wanted.add(name)
        elif any(c.method == name for c in CONFIGS.values()):
            wanted.update(c.name for c in CONFIGS.values() if c.method == name)
        else:
            known = list(CONFIGS) + sorted({c.method for c in CONFIGS.values()})
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TokenlensError(
                f"unknown configuration or method {name!r}{hint} (configurations: {', '.join(CONFIGS)})"
            )
    if not wanted:
        raise TokenlensError(
            f"{option('methods')} selects nothing: name at least one configuration or method"
        )
    return tuple(c for c in CONFIGS.values() if c.name in wanted)


def sweep_facts(loaded: Any, data_path: str | Path, probes: Sequence[Any]) -> SweepFacts:
    """The facts the configurations' options need, from the base model, the training data and the probes.

    The token ids are the first loss token of every training example and each intended probe's target (its
    first token when the target is several tokens long: the token a head- or embedding-restricted method
    must be able to move first).

    Raises:
        TokenlensError: Bad training data or a probe target that encodes to no known token.
    """
    from tokenlens.diff.probes import target_id
    from tokenlens.models.specs import bare_model
    from tokenlens.training.data import IGNORE, load_jsonl

    model = bare_model(loaded.model)
    vocab = model.get_input_embeddings().weight.shape[0]
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 10**9)
    data = load_jsonl(data_path, loaded.tokenizer, max_length, vocab_size=vocab)
    ids = {next(label for label in e.labels if label != IGNORE) for e in data.examples}
    for probe in probes:
        if probe.expect == "changed":
            found = target_id(loaded.tokenizer, probe, vocab)
            if found is not None:
                ids.add(found)
    return SweepFacts(int(model.config.num_hidden_layers), loaded.spec.qk_norm, tuple(sorted(ids)))
