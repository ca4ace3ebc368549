"""How every report words the explained quantity and the check (terminal, HTML and Markdown alike)."""

from __future__ import annotations

from tokenlens.attribution.result import LogitAttribution

QUANTITY_WORDS = {
    "logit": ("logit", "logit units"),
    "logit_difference": ("logit difference", "logit units"),
    "logprob": ("log-probability", "nats"),
}
"""How reports name each explained quantity (``result.QUANTITIES``): ``(what, units)``."""


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
