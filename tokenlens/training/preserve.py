"""Preservation: a fine-tune that keeps the base model's next-token distributions on ordinary text.

A *preserve set* is a list of passages the edit should not touch. Training with it adds

    W · KL(base ‖ tuned)

to each step's loss, averaged over every position of a few preserve passages (:data:`BATCH` per step, in a
seeded order that is a pure function of the step, so a resumed run sees the same passages). ``W`` is the
preserve weight. With a large ``W`` the tuned model's distributions on the preserve set stay close to the
base's; with ``W = 0`` the term is measured but changes nothing.

Where the base distributions come from:

* methods that leave the base weights alone (PEFT adapters, ``output == "adapter"``): the same model with
  the adapter switched off (``disable_adapter()``; for prompt/prefix tuning the bare model without its
  virtual tokens), computed each step, the exact KL over the whole vocabulary;
* methods that change or wrap base weights (``full``, ``head``, the custom methods): computed **once**
  before the method is applied and cached as each position's top :data:`TOP_K` tokens plus the rest's total
  mass. The KL is then over those ``TOP_K + 1`` outcomes: a lower bound on the full KL (it equals it when
  the tuned model keeps the rest's shape), and a cache of a few MB where the full distributions would take
  hundreds (49,152 × every position).

File format: JSONL whose lines are objects with a ``"prompt"`` (a probe file) or ``"text"`` field, or plain
text, one passage per line (blank lines and lines starting with ``#`` skipped). ``"default"`` names the
built-in set (:data:`DEFAULT`, a few hundred plain factual sentences written for tokenlens).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tokenlens.errors import TokenlensError, option
from tokenlens.models.specs import bare_model, virtual_keys, virtual_tokens
from tokenlens.tasks import __file__ as _TASKS

DEFAULT = Path(_TASKS).resolve().parent / "preserve.txt"
"""The built-in preserve set (``--preserve default``)."""
BATCH = 8
"""Preserve passages per training step."""
TOP_K = 64
"""Tokens per position a cached base distribution keeps (plus the rest's mass)."""
WEIGHT = 1.0
"""The default preserve weight."""


@dataclass(frozen=True)
class PreserveSet:
    """Tokenized preserve passages.

    Attributes:
        path: The file they came from.
        sha256: The file's sha256.
        ids: One tuple of token ids per passage (at least one token each).
    """

    path: Path
    sha256: str
    ids: tuple[tuple[int, ...], ...]

    def manifest(self, weight: float, base: str) -> dict[str, Any]:
        """What the manifest records (``base``: where the base distributions came from)."""
        return {
            "file": str(self.path),
            "sha256": self.sha256,
            "weight": weight,
            "n_texts": len(self.ids),
            "tokens": sum(len(i) for i in self.ids),
            "batch": BATCH,
            "base": base,
        }


def resolve_path(path: str | Path) -> Path:
    """``"default"`` as the built-in file; any other path as given."""
    return DEFAULT if str(path) == "default" else Path(path)


def read_texts(path: str | Path) -> list[str]:
    """The passages of a preserve file (see the module docstring).

    Raises:
        TokenlensError: A missing or unreadable file, a JSON line without a ``prompt``/``text`` string, or
            no passage at all.
    """
    path = resolve_path(path)
    if not path.is_file():
        raise TokenlensError(f"preserve file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenlensError(f"cannot read preserve file {path}: {exc}") from exc
    content = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    as_json = bool(content) and all(line.lstrip().startswith("{") for _, line in content)
    texts = []
    for number, line in content:
        if not as_json:
            if not line.lstrip().startswith("#"):
                texts.append(line.strip())
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise TokenlensError(f"{path}, line {number}: not valid JSON ({exc})") from exc
        text = record.get("prompt", record.get("text")) if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise TokenlensError(f"{path}, line {number}: a preserve line needs a non-empty prompt or text")
        texts.append(text)
    if not texts:
        raise TokenlensError(f"preserve file {path} has no passages")
    return texts


def load_preserve(path: str | Path, tokenizer: Any, max_length: int, vocab_size: int) -> PreserveSet:
    """Read and tokenize a preserve file (no special tokens added, as the trainer's data).

    Raises:
        TokenlensError: See :func:`read_texts`; a passage longer than ``max_length`` tokens or with token
            ids beyond the model's vocabulary.
    """
    path = resolve_path(path)
    texts = read_texts(path)
    ids = []
    for number, text in enumerate(texts, start=1):
        encoded = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not encoded:
            continue
        if len(encoded) > max_length:
            raise TokenlensError(f"{path}: passage {number} has {len(encoded)} tokens, over {max_length}")
        if max(encoded) >= vocab_size:
            raise TokenlensError(f"{path}: passage {number} has token ids beyond the model's {vocab_size}")
        ids.append(encoded)
    if not ids:
        raise TokenlensError(f"preserve file {path} has no passages")
    return PreserveSet(path, hashlib.sha256(path.read_bytes()).hexdigest(), tuple(ids))


def check_weight(weight: Any) -> None:
    """Refuse a preserve weight that is not a finite number ``>= 0``."""
    number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
    if not number or not math.isfinite(weight) or weight < 0:
        raise TokenlensError(f"{option('preserve_weight', repr(weight))}: give a finite number >= 0")


def pad(rows: list[tuple[int, ...]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``, each ``(batch, seq)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _cached_base(model, preserve: PreserveSet, pad_id: int, device) -> list[tuple[torch.Tensor, ...]]:
    """Per passage: ``(top ids (seq, k), top log-probs (seq, k), log rest mass (seq,))`` of the base."""
    cache = []
    with torch.no_grad():
        for start in range(0, len(preserve.ids), BATCH):
            rows = list(preserve.ids[start : start + BATCH])
            ids, mask = pad(rows, pad_id, device)
            logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            k = min(TOP_K, logp.shape[-1] - 1)
            top, index = logp.topk(k, dim=-1)
            rest = logp.scatter(-1, index, float("-inf")).logsumexp(-1)
            for i, row in enumerate(rows):
                n = len(row)
                cache.append((index[i, :n].cpu(), top[i, :n].cpu(), rest[i, :n].cpu()))
    return cache


class PreserveTerm:
    """``weight · KL(base ‖ tuned)`` over a step's preserve passages (see the module docstring).

    Build it before the method is applied (``cached`` methods read the base distributions then).
    """

    def __init__(
        self, preserve: PreserveSet, weight: float, *, seed: int, cached: bool, model, pad_id: int, device
    ) -> None:
        self.preserve, self.weight, self.seed, self.pad_id = preserve, float(weight), seed, pad_id
        self.cache = _cached_base(model, preserve, pad_id, device) if cached else None
        self.kls: list[float] = []
        self.step = 0
        """The training step (0-based) whose passages :meth:`__call__` uses; the trainer sets it."""
        self._orders: dict[int, list[int]] = {}

    @property
    def base(self) -> str:
        """Where the base distributions come from, in words (for the manifest)."""
        if self.cache is None:
            return "the adapter switched off, each step (full KL)"
        return f"cached before training: top {TOP_K} tokens + the rest's mass per position"

    def batch(self, step: int) -> list[int]:
        """The passages of step ``step`` (0-based): consecutive slices of seeded per-epoch permutations."""
        n, chosen = len(self.preserve.ids), []
        for slot in range(step * BATCH, step * BATCH + min(BATCH, n)):
            epoch = slot // n
            if epoch not in self._orders:
                generator = torch.Generator().manual_seed((self.seed + 7919 * (epoch + 1)) % 2**63)
                self._orders[epoch] = torch.randperm(n, generator=generator).tolist()
            chosen.append(self._orders[epoch][slot % n])
        return chosen

    def __call__(self, model) -> torch.Tensor:
        """The weighted KL of step :attr:`step` for ``model`` (the trained, maybe PEFT-wrapped, model)."""
        chosen = self.batch(self.step)
        rows = [self.preserve.ids[i] for i in chosen]
        device = next(p for p in model.parameters()).device
        ids, mask = pad(rows, self.pad_id, device)
        tuned = model(input_ids=ids, attention_mask=mask).logits
        tuned = tuned[:, tuned.shape[1] - ids.shape[1] :].float()  # prompt tuning prepends virtual positions
        if self.cache is None:
            kl = self._kl_toggled(model, ids, mask, tuned)
        else:
            kl = self._kl_cached(chosen, tuned)
        self.kls.append(float(kl.detach()))
        return self.weight * kl

    def _kl_toggled(self, model, ids, mask, tuned) -> torch.Tensor:
        with torch.no_grad():
            if virtual_tokens(model) or virtual_keys(model):
                base = bare_model(model)(input_ids=ids, attention_mask=mask).logits
            else:
                with model.disable_adapter():
                    base = model(input_ids=ids, attention_mask=mask).logits
        base_logp = F.log_softmax(base.float(), dim=-1)
        per = (base_logp.exp() * (base_logp - F.log_softmax(tuned, dim=-1))).sum(-1)  # (batch, seq)
        return (per * mask).sum() / mask.sum()

    def _kl_cached(self, chosen: list[int], tuned: torch.Tensor) -> torch.Tensor:
        logq = F.log_softmax(tuned, dim=-1)
        total, count = tuned.new_zeros(()), 0
        for row, index in enumerate(chosen):
            top_ids, top_logp, rest_logp = (t.to(tuned.device) for t in self.cache[index])
            n = top_ids.shape[0]
            q = logq[row, :n]
            q_top = q.gather(-1, top_ids)
            q_rest = q.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
            per = (top_logp.exp() * (top_logp - q_top)).sum(-1) + rest_logp.exp() * (rest_logp - q_rest)
            total, count = total + per.sum(), count + n
        return total / count


def mean_kl(base_model, tuned_model, preserve: PreserveSet, pad_id: int = 0) -> float:
    """KL(base ‖ tuned) over the full vocabulary, averaged over every position of every passage (a
    measurement, e.g. of how well a run preserved; both models plain callables returning ``.logits``)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(preserve.ids), BATCH):
            rows = list(preserve.ids[start : start + BATCH])
            device = next(base_model.parameters()).device
            ids, mask = pad(rows, pad_id, device)
            p = F.log_softmax(base_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            q = F.log_softmax(tuned_model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            q = q[:, q.shape[1] - ids.shape[1] :]
            per = (p.exp() * (p - q)).sum(-1)
            total += float((per * mask).sum())
            count += int(mask.sum())
    return total / count
