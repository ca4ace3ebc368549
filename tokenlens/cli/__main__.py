"""``python -m tokenlens.cli`` (what ``accelerate launch -m tokenlens.cli train …`` runs)."""

from tokenlens.cli import console_main

console_main()
