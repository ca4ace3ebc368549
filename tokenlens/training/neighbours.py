"""Neighbour prompts: what an edit of one fact must not move, generated from the fact itself.

Editing "The capital of France is" → " Lyon" by gradient descent on that one sentence moves far more than
the fact: the model's answers to *neighbouring* prompts drift with it. The knowledge-editing literature
(ROME, MEMIT, AlphaEdit; CounterFact's "neighbourhood" prompts) names the two neighbourhoods that suffer
most, and :func:`neighbour_prompts` writes both from the edit's prompt and subject:

* **same relation, other subjects** — the prompt with its subject replaced by each built-in subject
  (``tasks/neighbour_subjects.txt``: countries, regions, people): "The capital of Canada is", …;
* **same subject, other relations** — each built-in relation template (``tasks/neighbour_relations.txt``,
  ``{s}`` = the subject): "The flag of France is", ….

``tokenlens edit`` trains with them as its preserve set: the trainer's KL(base ‖ tuned) term at every
position of every neighbour prompt, so the base model's own next-token distributions there are the
targets — nothing about the right answers is assumed. Prompts the check will judge (the keep set, the
paraphrases, the edit's own prompt) are dropped, so the check stays held out; the built-in lists name no
subject or relation of the built-in fact-edit task's controls.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from tokenlens.tasks import __file__ as _TASKS

_ROOT = Path(_TASKS).resolve().parent
SUBJECTS = _ROOT / "neighbour_subjects.txt"
RELATIONS = _ROOT / "neighbour_relations.txt"


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def neighbour_prompts(prompt: str, subject: str, exclude: Collection[str] = ()) -> tuple[str, ...]:
    """The neighbours of the fact ``prompt`` about ``subject`` (see the module docstring), each once.

    The subject is replaced at its last occurrence in the prompt (where the fact is read). ``exclude``:
    prompts never to return (the check's own). Comparison ignores surrounding spaces.

    Raises:
        ValueError: ``subject`` is empty or not in ``prompt`` (callers check this first, with a one-line
            error for the user).
    """
    subject = subject.strip()
    at = prompt.rfind(subject) if subject else -1
    if at < 0:
        raise ValueError(f"subject {subject!r} is not in the prompt {prompt!r}")
    head, tail = prompt[:at], prompt[at + len(subject) :]
    swapped = [head + other + tail for other in _lines(SUBJECTS) if other != subject]
    related = [template.replace("{s}", subject) for template in _lines(RELATIONS)]
    skip = {text.strip() for text in (*exclude, prompt)}
    seen: set[str] = set()
    out = []
    for text in swapped + related:
        if text.strip() not in skip and text not in seen:
            seen.add(text)
            out.append(text)
    return tuple(out)
