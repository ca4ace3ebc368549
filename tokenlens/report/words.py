"""How every attribution report words what it explains (terminal, HTML and Markdown alike)."""

from __future__ import annotations

from tokenlens.attribution.result import LogitAttribution
from tokenlens.report.kit.text import QUANTITY_WORDS

HOW_TO_READ = (
    "Direct logit attribution. The residual stream at the explained position is a sum of writes: the token "
    "embedding plus every attention layer's and every MLP's output. With the final RMSNorm's scale s taken "
    "from the real forward pass, the target's logit is the sum over components c of u·(g ⊙ c)·s (u: the "
    "target's row of the output head, g: the final-norm weight), plus the head's bias if the model has one. "
    "Each row of the components table is one such term.",
    "The parts sum exactly to the model's logit (or to the logit difference against the contrast token), up "
    "to float32 rounding: the check line shows the sum, the model's own number, the error and the tolerance "
    "(1e-4 × max(1, largest |part|)). Finer splits (heads, neurons, experts, source positions) split one "
    "parent component further; their residual is what is left over (0 up to rounding unless the weights "
    "are quantised).",
    "Direct, measured, estimated. A direct contribution credits a component's own path to the logits only; "
    "its indirect effect through later layers is not in it. Sections marked MEASURED (ablation, activation "
    "patching, RoPE and norm-scale ablation) rerun the model with something changed and report the change "
    "of the metric, indirect effects included. Attribution patching gives first-order ESTIMATES of such "
    "changes from one backward pass; the exactly measured effect stands next to each confirmed one.",
    "Units. Contributions and logits are in logit units (natural-log odds before the softmax): +1 multiplies "
    "the target's odds against every other token by e. Probabilities lie between 0 and 1; log-probabilities "
    "are natural logs. A Δ is in the unit of its section's metric. Ranks count from 1 (rank 1 = the top-1 "
    "token; the JSON's target_rank counts from 0).",
    "Colours: in the HTML report's tables and shaded tokens green pushes the target (or the metric) up and "
    "red down; in the figures blue is up and red down (the terminal, like the HTML tables, uses green and "
    "red).",
    "Tokens are shown as Python string literals: ' Paris' has a leading space, '\\n' is a newline, and "
    "invisible or direction-changing characters appear as escapes such as '\\u200b'.",
)
"""The "how to read this report" paragraphs of the HTML and Markdown reports."""


def rounding_note(result: LogitAttribution) -> str:
    """For a 16-bit model, one sentence on what the check's whole is and how its own value differs (else "").

    The components of a 16-bit model sum to the float32 readout of its own final stream; its own value
    rounds the final norm and the head to 16 bits on top (``Decomposition.model_value``).
    """
    d = result.decomposition
    if d.model_value is None:
        return ""
    what = QUANTITY_WORDS[result.quantity][0]
    return (
        f"The model ran in {result.dtype}: its {what} here is the float32 readout of its own {result.dtype} "
        f"stream; its own {result.dtype} forward gave {d.model_value:.6f} "
        f"({d.readout_rounding:+.1e}, the rounding of its final norm and head)."
    )
