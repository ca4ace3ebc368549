"""Built-in tasks: small training sets with the probe sets that judge them, ready for the default model.

Each task is a folder of JSONL files shipped with the package:

* ``train.jsonl`` — the edit alone (a careless fine-tune: nothing tells the model what must stay);
* ``train_careful.jsonl`` — the edit plus control examples the model must keep;
* ``probes.jsonl`` — intended probes (``"expect": "changed"``), held-out ones, and controls.

``fact-edit``: "The capital of France is" → " Lyon" (completion-style). Controls: other capitals (some
trained, some held out), other facts about France, unrelated facts.

``instruction``: in chat (the model's chat template), the assistant starts every answer with "Certainly"
(one token of the SmolLM2 tokenizer). Intended probes: chat questions, trained and held out; controls:
plain completion prompts, which must keep their answers.

``format``: a token-level style change: the answer after a ``Q: …`` line and ``A:`` opens with markdown
bold (`` **``, one token). Intended probes: Q/A prompts, trained and held out; controls: plain
completion prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenlens.errors import TokenlensError

_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Task:
    """A built-in task.

    Attributes:
        name: Its name (``fact-edit``).
        summary: One line: what the fine-tune should change.
        folder: Where its files are.
    """

    name: str
    summary: str
    folder: Path

    @property
    def train(self) -> Path:
        """The edit alone."""
        return self.folder / "train.jsonl"

    @property
    def train_careful(self) -> Path:
        """The edit plus control examples."""
        return self.folder / "train_careful.jsonl"

    @property
    def probes(self) -> Path:
        """Intended and control probes."""
        return self.folder / "probes.jsonl"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("fact-edit", 'a fact edit: "The capital of France is" -> " Lyon"', _ROOT / "fact_edit"),
        Task("instruction", 'chat: the assistant opens every answer with "Certainly"', _ROOT / "instruction"),
        Task("format", 'format: answers after "Q: … A:" open with markdown bold " **"', _ROOT / "format"),
    )
}


def get_task(name: str) -> Task:
    """The built-in task ``name``.

    Raises:
        TokenlensError: Unknown task (the known ones are listed).
    """
    if name not in TASKS:
        raise TokenlensError(f"unknown task {name!r} (built-in tasks: {', '.join(TASKS)})")
    return TASKS[name]
