"""Drift over a held-out text: KL(base ‖ tuned) at every token, and the contexts that drifted most, explained.

Probes say whether chosen prompts moved; a held-out text says how much *everything else* moved. The text is
plain UTF-8: with ``split="lines"`` every non-blank line is a passage (lines starting with ``#`` are
comments), a passage longer than ``window`` tokens cut into windows of ``window`` tokens; with
``split="windows"`` the whole text (comment lines dropped, lines joined by newlines) is cut into windows —
for prose wrapped at a fixed width, such as Project Gutenberg files. Each passage is tokenized as a prompt
(the tokenizer's own special tokens added), and every one of its tokens counts: the next-token
distribution after it is compared, base against tuned, over the full vocabulary in float64.

Passages run in batches, padded on the right with an attention mask (a causal model's real positions never
see the padding), so a few thousand tokens take a few forward passes per side. Per position: KL(base ‖
tuned), and both models' top-1 among decodable ids. Then ``mean``, ``p99`` (linear interpolation), ``max``,
the share of positions whose top-1 changed, and the most-drifted contexts — the largest KL of each passage,
largest first, at most one per passage — each explained as a probe (:func:`~tokenlens.diff.engine.
explain_position`): prefix = the passage up to that token, tracked = the tuned top-1, contrast = the base
top-1 (none when both agree), so the exact split and the components are those of ``logit[tuned top-1] −
logit[base top-1]``.

``default`` names the built-in held-out sample, ``tokenlens/tasks/corpus.txt`` (public-domain text, not the
preserve set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from tokenlens.attribution import inputs
from tokenlens.attribution.result import TokenScore
from tokenlens.diff.engine import DiffOptions, explain_position
from tokenlens.diff.pairing import ModelPair
from tokenlens.diff.result import CorpusDrift, DriftedContext, Probe
from tokenlens.errors import TokenlensError, option
from tokenlens.models.specs import bare_model

DEFAULT = "default"
WINDOW = 128
DRIFTED = 5
SPLITS = ("lines", "windows")
CELLS = 1 << 25
"""Logit cells (rows × positions × vocabulary) per forward pass: bounds a batch's memory (128 MiB float32)."""

_BUILT_IN = Path(__file__).resolve().parent.parent / "tasks" / "corpus.txt"


@dataclass(frozen=True)
class Corpus:
    """A held-out text read and split, before tokenization.

    Attributes:
        source: What the user named (``default`` or a path).
        texts: The passages (``lines``) or the whole text (``windows``, one item).
        split: ``lines`` or ``windows``.
    """

    source: str
    texts: tuple[str, ...]
    split: str


def corpus_path(source: str | Path) -> Path:
    """The file a corpus source names (``default``: the built-in sample)."""
    return _BUILT_IN if str(source) == DEFAULT else Path(source)


def read_corpus(source: str | Path, split: str = "lines") -> Corpus:
    """Read a corpus file (``default``: the built-in sample); see the module text for ``split``.

    Raises:
        TokenlensError: A missing or unreadable file, one with no text, or an unknown ``split``.
    """
    if split not in SPLITS:
        raise TokenlensError(f"{option('corpus_split', split)}: choose lines or windows")
    path = corpus_path(source)
    if not path.is_file():
        raise TokenlensError(f"corpus file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenlensError(f"cannot read corpus file {path}: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise TokenlensError(f"corpus file {path} has no text (blank and '#' lines only)")
    texts = tuple(lines) if split == "lines" else ("\n".join(lines),)
    return Corpus(str(source), texts, split)


def encode_corpus(
    tokenizer, corpus: Corpus, window: int = WINDOW, max_tokens: int | None = None
) -> tuple[list[list[int]], int]:
    """The passages' token ids, cut into windows of at most ``window`` tokens, and how many tokens past
    ``max_tokens`` were left out.

    Raises:
        TokenlensError: ``window`` or ``max_tokens`` below 1, or a text that tokenizes to nothing.
    """
    check_corpus_options(window, max_tokens, None)
    passages: list[list[int]] = []
    for text in corpus.texts:
        ids = list(tokenizer(text)["input_ids"])
        passages += [ids[i : i + window] for i in range(0, len(ids), window)]
    if not passages:
        raise TokenlensError(f"corpus {corpus.source} tokenizes to no tokens")
    total = sum(map(len, passages))
    if max_tokens is None or total <= max_tokens:
        return passages, 0
    kept, left = [], max_tokens
    for ids in passages:
        if left <= 0:
            break
        kept.append(ids[:left])
        left -= len(kept[-1])
    return kept, total - max_tokens


@torch.no_grad()
def padded_logits(model: torch.nn.Module, rows: list[list[int]], pad: int) -> torch.Tensor:
    """One forward pass of ``rows`` padded on the right (attention mask 0 on the padding): float32 logits
    ``(rows, longest, vocab)``, a prompt-tuned model's virtual positions dropped."""
    device = next(bare_model(model).parameters()).device
    longest = max(map(len, rows))
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    return logits[:, logits.shape[1] - longest :].float().cpu()  # virtual tokens come first


@dataclass(frozen=True)
class Scores:
    """Per position of one passage: KL(base ‖ tuned) and each side's top-1 (id, logit, probability)."""

    kl: torch.Tensor
    base_ids: torch.Tensor
    tuned_ids: torch.Tensor
    base_top: torch.Tensor  # (n, 2): logit, probability of the base top-1 under the base model
    tuned_top: torch.Tensor


def score_passages(pair: ModelPair, passages: list[list[int]], cells: int = CELLS) -> list[Scores]:
    """Both models over every passage, batched (see the module text)."""
    tokenizer = pair.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    vocab = bare_model(pair.tuned.model).get_output_embeddings().weight.shape[0]
    limit = inputs.decodable_vocab(tokenizer, vocab)
    order = sorted(range(len(passages)), key=lambda i: -len(passages[i]))  # similar lengths share a batch
    out: dict[int, Scores] = {}
    start = 0
    while start < len(order):
        per_row = max(len(passages[order[start]]), 1) * vocab
        chunk = order[start : start + max(1, cells // per_row)]
        rows = [passages[i] for i in chunk]
        with pair.side("base") as model:
            base = padded_logits(model, rows, pad)
        with pair.side("tuned") as model:
            tuned = padded_logits(model, rows, pad)
        for r, i in enumerate(chunk):
            n = len(passages[i])
            out[i] = _score(base[r, :n], tuned[r, :n], limit)
        start += len(chunk)
    return [out[i] for i in range(len(passages))]


def _score(base: torch.Tensor, tuned: torch.Tensor, limit: int) -> Scores:
    """KL(base ‖ tuned) = Σ p·(b − t) − (lse_b − lse_t) in float64 (``p = softmax(b)``, ``lse`` the
    log-sum-exp), and both top-1 tokens.

    Raises:
        TokenlensError: NaN or infinite logits (the KL is not finite).
    """
    b64, t64 = base.double(), tuned.double()
    lse_b, lse_t = b64.logsumexp(-1), t64.logsumexp(-1)
    p = (b64 - lse_b[:, None]).exp_()
    kl = (p * (b64 - t64)).sum(-1) - (lse_b - lse_t)
    if not torch.isfinite(kl).all():
        raise TokenlensError(
            f"a model produced NaN or infinite logits on the corpus (try {option('dtype', 'float32')})"
        )
    b, t = base[:, :limit].argmax(-1), tuned[:, :limit].argmax(-1)

    def top(logits: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        value = logits.gather(-1, ids[:, None])[:, 0].double()
        return torch.stack([value, (value - lse).exp()], -1)

    return Scores(kl.clamp_min(0.0), b, t, top(base, lse_b, b), top(tuned, lse_t, t))


def p99(values: torch.Tensor) -> float:
    """The 99th percentile with linear interpolation between order statistics (numpy's default)."""
    return float(torch.quantile(values.double(), 0.99)) if values.numel() else math.nan


def corpus_drift(
    pair: ModelPair,
    corpus: Corpus,
    *,
    window: int = WINDOW,
    max_tokens: int | None = None,
    drifted: int = DRIFTED,
    threshold: float | None = None,
    options: DiffOptions | None = None,
) -> CorpusDrift:
    """Per-token KL(base ‖ tuned) over every token of ``corpus`` and its ``drifted`` most-drifted contexts,
    explained (see the module text); ``threshold`` is the mean KL ``check`` allows (``None``: report only).

    Raises:
        TokenlensError: Bad window or token cap, a text with no tokens, NaN logits.
    """
    tokenizer = pair.tokenizer
    context = getattr(bare_model(pair.tuned.model).config, "max_position_embeddings", None)
    window = min(window, context) if context else window
    passages, unscored = encode_corpus(tokenizer, corpus, window, max_tokens)
    scores = score_passages(pair, passages)
    kl = torch.cat([s.kl for s in scores])
    changed = sum(int((s.base_ids != s.tuned_ids).sum()) for s in scores)
    peaks = sorted(
        ((float(s.kl.max()), i, int(s.kl.argmax())) for i, s in enumerate(scores)),
        key=lambda x: (-x[0], x[1]),
    )
    contexts = []
    for value, i, pos in peaks[:drifted]:
        s, ids = scores[i], passages[i][: pos + 1]
        base_id, tuned_id = int(s.base_ids[pos]), int(s.tuned_ids[pos])
        text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        probe = Probe(prompt=text, group="corpus", position=pos)
        explained = explain_position(
            pair, probe, ids, tuned_id, base_id if base_id != tuned_id else None, options
        )
        contexts.append(
            DriftedContext(
                passage=i,
                position=pos,
                kl=value,
                base_top1=_token(tokenizer, base_id, s.base_top[pos]),
                tuned_top1=_token(tokenizer, tuned_id, s.tuned_top[pos]),
                probe=explained,
            )
        )
    return CorpusDrift(
        source=corpus.source,
        split=corpus.split,
        window=window,
        passages=len(passages),
        tokens=int(kl.numel()),
        unscored=unscored,
        mean_kl=float(kl.mean()),
        p99_kl=p99(kl),
        max_kl=float(kl.max()),
        top1_changed=changed,
        drifted=tuple(contexts),
        threshold=threshold,
    )


def _token(tokenizer, token: int, values: torch.Tensor) -> TokenScore:
    return TokenScore(token, inputs.decode_token(tokenizer, token), float(values[0]), float(values[1]))


def check_corpus_options(window: int, max_tokens: int | None, threshold: float | None) -> None:
    """Refuse corpus settings that cannot mean anything (before any model loads).

    Raises:
        TokenlensError: A window or token cap below 1, or a negative / non-finite threshold.
    """
    if window < 1:
        raise TokenlensError(f"{option('corpus_window', window)} must be at least 1 token")
    if max_tokens is not None and max_tokens < 1:
        raise TokenlensError(f"{option('corpus_tokens', max_tokens)} must be at least 1 token")
    if threshold is not None and not 0.0 <= threshold < float("inf"):
        raise TokenlensError(f"{option('max_corpus_kl')} is a KL divergence in nats (>= 0), got {threshold}")
