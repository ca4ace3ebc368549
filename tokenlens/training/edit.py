"""Edit one fact, and prove that nothing else moved: locate → edit with preservation → check.

:func:`edit` takes a prompt and the answer it should now have (``"The capital of France is"`` →
``" Lyon"``) and

1. refuses what cannot be an edit (an empty prompt or target, a subject that is not in the prompt, an empty
   or missing keep / paraphrase file); when the model already answers the target (greedy, every target token)
   there is **nothing to edit** and nothing is written;
2. **locates** the model's current answer (:func:`tokenlens.causal.locate.locate`, the subject noised when
   given): the prompt position and the MLP layers that carry it;
3. **edits**: ``lora`` (rank 8 on the located layers' MLPs, trained on the fact with the trainer's
   KL(base ‖ tuned) preservation term over the fact's **neighbour prompts**, weight :data:`NEIGHBOUR_WEIGHT`:
   the prompt with other subjects, the subject with other relations —
   :mod:`tokenlens.training.neighbours`, written to ``out/edit-neighbours.txt``) or ``rank-one`` (the located
   peak layer's ``down_proj`` at the subject's last token, key statistics from the built-in preserve set) —
   through the trainer, into ``out/model``;
4. **checks** the saved edit with the diff engine (:func:`tokenlens.diff.diff`, no patching): the prompt and
   each paraphrase must now answer the target (its first token, for a multi-token target), and every keep
   probe must keep its top-1 with KL(base ‖ tuned) ≤ ``max_kl`` — ``tokenlens check``'s rules and
   thresholds.

``auto`` is ``lora`` with neighbours: on the default model and the built-in fact-edit task it was the
cleaner of the two (``reports/edit.md`` has the measurements). ``preserve`` replaces the neighbour prompts by
a file (``"default"``: the built-in plain-text set; for ``rank-one`` it is the key-statistics text).
The default keep set is the built-in fact-edit task's control probes, minus any prompt that is the edit's
own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenlens.causal.locate import locate
from tokenlens.causal.tracing import find_subject
from tokenlens.diff import DiffOptions, DiffReport, Probe, diff, load_probes, pair_models
from tokenlens.diff.check import MAX_KL, MIN_GAIN
from tokenlens.errors import TokenlensError, option
from tokenlens.tasks import get_task
from tokenlens.training.neighbours import neighbour_prompts
from tokenlens.training.preserve import read_texts
from tokenlens.training.trainer import train

METHODS = ("auto", "rank-one", "lora")
AUTO_METHOD = "lora"
"""What ``method="auto"`` runs (the cleaner on the default model: see ``reports/edit.md``)."""
NEIGHBOURS = "neighbours"
"""``preserve=`` value: the fact's generated neighbour prompts (the default)."""
NEIGHBOUR_WEIGHT = 10.0
"""The preservation term's weight over the neighbour prompts (``reports/edit.md``: 1 spills, 30 loses the
held-out paraphrase)."""
NEIGHBOURS_FILE = "edit-neighbours.txt"
LORA_STEPS = 30
"""Steps of the ``lora`` edit."""
MODEL_DIR = "model"
REPORT_JSON = "edit-report.json"
DATA_FILE = "edit-data.jsonl"


@dataclass(frozen=True)
class EditResult:
    """What :func:`edit` did.

    Attributes:
        prompt: The prompt.
        target: The new answer (decoded text).
        status: ``"edited"`` or ``"nothing to edit"`` (the model already answers the target).
        method: The method that ran (``rank-one`` or ``lora``; ``None`` when nothing was edited).
        subject: The subject given, if any.
        location: The location's sentence (``None`` when nothing was edited).
        layers: The located MLP window.
        edited_layers: The layers the edit changed.
        out_dir: The output folder; ``out_dir / "model"`` is the trainer output (``None`` when nothing was
            edited).
        report: The check's diff report (``None`` when nothing was edited).
        seconds: Wall time of the whole edit.
        neighbours: The neighbour prompts the edit was trained to keep (empty: another preserve set).
    """

    prompt: str
    target: str
    status: str
    method: str | None = None
    subject: str | None = None
    location: str | None = None
    layers: tuple[int, ...] = ()
    edited_layers: tuple[int, ...] = ()
    out_dir: Path | None = None
    report: DiffReport | None = None
    seconds: float = 0.0
    neighbours: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """The edit holds and nothing kept moved (also when there was nothing to edit)."""
        return self.report is None or self.report.passed

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``edit-report.json``)."""
        probes = [] if self.report is None else self.report.probes
        return {
            "prompt": self.prompt,
            "target": self.target,
            "status": self.status,
            "passed": self.passed,
            "method": self.method,
            "subject": self.subject,
            "location": self.location,
            "located_layers": list(self.layers),
            "edited_layers": list(self.edited_layers),
            "model": None if self.out_dir is None else str(self.out_dir / MODEL_DIR),
            "seconds": self.seconds,
            "neighbour_prompts": len(self.neighbours),
            "max_kl": MAX_KL,
            "min_gain": MIN_GAIN,
            "probes": [
                {
                    "prompt": p.probe.label,
                    "group": p.probe.group,
                    "expect": p.probe.expect,
                    "passed": p.verdict.passed,
                    "reason": p.verdict.reason,
                    "kl": p.kl,
                    "top1_before": p.base_top[0].token,
                    "top1_after": p.tuned_top[0].token,
                }
                for p in probes
            ],
        }


def read_prompts(path: str | Path, what: str) -> list[str]:
    """Prompts from a JSONL probe file (``prompt`` fields) or plain text (one per line).

    Raises:
        TokenlensError: A missing file, or one without prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise TokenlensError(f"{what} file {path} does not exist")
    try:
        return read_texts(path)
    except TokenlensError as exc:
        raise TokenlensError(str(exc).replace("preserve file", f"{what} file")) from None


def keep_probes(keep: str | Path | None, exclude: set[str]) -> tuple[Probe, ...]:
    """The controls: the keep file's prompts, or the built-in fact-edit controls; ``exclude`` dropped."""
    if keep is None:
        probes = [p for p in load_probes(get_task("fact-edit").probes) if p.expect == "unchanged"]
        prompts = [(p.prompt, p.group) for p in probes]
    else:
        prompts = [(text, "keep") for text in read_prompts(keep, "keep")]
    kept = tuple(
        Probe(prompt=text, expect="unchanged", group=group) for text, group in prompts if text not in exclude
    )
    if not kept:
        raise TokenlensError(f"the keep set has no prompt other than the edit's own: {keep}")
    return kept


def check_inputs(prompt: str, target: str, out: str | Path, method: str) -> None:
    """What needs no model: texts, the method, the output folder (missing or empty)."""
    if not prompt.strip():
        raise TokenlensError(f"the {option('prompt')} is empty: give the sentence the fact completes")
    if not target.strip():
        raise TokenlensError(f"the {option('target')} is empty: give the new answer, e.g. ' Lyon'")
    if method not in METHODS:
        raise TokenlensError(f"{option('method', method)}: choose one of {', '.join(METHODS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TokenlensError(f"{out} exists and is not empty: choose a new {option('out')} folder")


def _word_at(prompt: str, token: str) -> str:
    """The whole word of ``prompt`` around the token text's last occurrence (``"iffel"`` → ``"Eiffel"``)."""
    token = token.strip()
    at = prompt.rfind(token) if token else -1
    if at < 0:
        return token
    start, end = at, at + len(token)
    while start > 0 and prompt[start - 1].isalnum():
        start -= 1
    while end < len(prompt) and prompt[end].isalnum():
        end += 1
    return prompt[start:end]


def _neighbours(prompt: str, subject: str | None, judged: set[str]) -> tuple[str, ...]:
    """The fact's neighbour prompts, minus every prompt the check judges.

    Raises:
        TokenlensError: No subject (``--layer`` without ``--subject``) or one the prompt does not contain.
    """
    if not subject or subject not in prompt:
        raise TokenlensError(
            f"the neighbour prompts need the subject: give {option('subject')} (or a file as "
            f"{option('preserve')})"
        )
    return neighbour_prompts(prompt, subject, judged)


def already_answers(loaded, prompt_ids: list[int], target_ids: list[int]) -> bool:
    """The model's greedy continuation of the prompt is the target, token for token."""
    ids = torch.tensor([prompt_ids + target_ids])
    with torch.no_grad():
        predicted = loaded.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].argmax(-1)
    return predicted.tolist() == target_ids


def edit(
    loaded,
    prompt: str,
    target: str,
    out: str | Path,
    *,
    subject: str | None = None,
    keep: str | Path | None = None,
    paraphrases: str | Path | None = None,
    method: str = "auto",
    seed: int = 0,
    steps: int | None = None,
    layer: int | None = None,
    preserve: str | Path = NEIGHBOURS,
    preserve_weight: float = NEIGHBOUR_WEIGHT,
) -> EditResult:
    """Locate, edit with preservation, check (see the module docstring). ``loaded`` is changed in place.

    ``layer`` skips the causal trace (the edit goes there; for ``lora`` that one layer); ``preserve`` is the
    preservation set: ``"neighbours"`` (generated; needs a subject, given or located), ``"default"`` or a
    file — the KL term's texts for lora (weight ``preserve_weight``), the key statistics' for rank-one
    (``"neighbours"`` means the built-in text there).

    Raises:
        TokenlensError: Bad input (one line), before anything is written.
    """
    started = time.perf_counter()
    check_inputs(prompt, target, out, method)
    out = Path(out)
    tokenizer = loaded.tokenizer
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    if subject is not None:
        find_subject(tokenizer, prompt_ids, subject)  # refuses a subject the prompt does not contain
    extra = [] if paraphrases is None else read_prompts(paraphrases, "paraphrases")
    controls = keep_probes(keep, {prompt, *extra})
    if already_answers(loaded, prompt_ids, target_ids):
        return EditResult(prompt, target, "nothing to edit", seconds=time.perf_counter() - started)
    method = AUTO_METHOD if method == "auto" else method
    about = subject
    if layer is None:
        location = locate(loaded, prompt, subject=subject, seed=seed)
        where, window, peak, position = (
            location.sentence(),
            tuple(location.layer_list),
            location.peak_layer,
            location.position,
        )
        about = about or _word_at(prompt, location.token)
    else:
        where, window, peak, position = (
            f"not located: layer {layer} given",
            (layer,),
            layer,
            len(prompt_ids) - 1,
        )
    if method == "rank-one":
        options = {"layer": peak}
        options.update({"subject": subject} if subject is not None else {"position": position})
        edited = (peak,)
    else:
        options = {"layers": list(window), "target_modules": ["gate_proj", "up_proj", "down_proj"]}
        edited = window
        steps = steps or LORA_STEPS
    neighbours: tuple[str, ...] = ()
    if preserve == NEIGHBOURS and method == "lora":
        judged = {prompt, *extra, *(p.prompt for p in controls)}
        neighbours = _neighbours(prompt, about, judged)
    out.mkdir(parents=True, exist_ok=True)
    data = out / DATA_FILE
    data.write_text(json.dumps({"prompt": prompt, "completion": target}) + "\n", encoding="utf-8")
    if neighbours:
        preserve = out / NEIGHBOURS_FILE
        preserve.write_text("".join(text + "\n" for text in neighbours), encoding="utf-8")
    elif preserve == NEIGHBOURS:
        preserve = "default"
    train(
        loaded,
        method,
        data,
        out / MODEL_DIR,
        steps=steps,
        seed=seed,
        options=options,
        preserve=preserve,
        preserve_weight=preserve_weight if method == "lora" else 1.0,
        batch_size=1,
    )
    first = tokenizer.decode(target_ids[:1])
    probes = (
        Probe(prompt=prompt, target=first, expect="changed", group="edit"),
        *(Probe(prompt=text, target=first, expect="changed", group="paraphrase") for text in extra),
        *controls,
    )
    pair = pair_models(
        str(out / MODEL_DIR), dtype="float32", device=str(next(loaded.model.parameters()).device)
    )
    report = diff(pair, probes, DiffOptions(causal=False))
    return EditResult(
        prompt,
        target,
        "edited",
        method,
        subject,
        where,
        window,
        edited,
        out,
        report,
        time.perf_counter() - started,
        neighbours,
    )
