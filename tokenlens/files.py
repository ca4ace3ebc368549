"""The names of the files tokenlens reads and writes: one place for every on-disk format.

A ``tokenlens train`` output folder holds the trained result (a PEFT adapter, a HF checkpoint, or a tokenlens
custom-method folder), the manifest and the loss curve; while training, a resumable checkpoint; a sweep keeps
one run record and one diff per run and writes its map beside them. Every module that reads or writes one of
these imports its name from here, so a format is named once.
"""

from __future__ import annotations

# --- a training run's output folder ------------------------------------------------------------------
MANIFEST = "tokenlens-manifest.json"
"""The run's manifest: method, options, base model and fingerprint, data hash, losses, the files written."""
LOSS_PNG = "loss.png"
"""The loss curve."""
CHECKPOINT = "tokenlens-checkpoint"
"""The folder holding the resumable checkpoint while a run trains."""
STAGING_PREFIX = ".tokenlens-staging-"
"""Name prefix of the temporary folder a run's output is written into before it moves into place."""

# --- a custom-method folder (bias, adapter, rope) ------------------------------------------------------
METHOD_FILE = "tokenlens-method.json"
"""What a custom method is: method name, options, format version, its parameters by module path."""
METHOD_WEIGHTS = "method_weights.safetensors"
"""Only the custom method's own tensors."""
METHOD_FORMAT = "tokenlens-method"
METHOD_FORMAT_VERSION = 1

# --- the Hugging Face and PEFT formats tokenlens reads --------------------------------------------------
CONFIG = "config.json"
MODEL_WEIGHTS = "model.safetensors"
MODEL_WEIGHTS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
ADAPTER_README = "README.md"
"""In a trained adapter's folder: what its base is and how to load it without tokenlens."""
GGUF_SOURCE = "tokenlens-source.json"
"""In a GGUF file's converted cache folder: which GGUF file it came from."""

OUTPUT_FILES = {
    "adapter": (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ADAPTER_PICKLE, ADAPTER_README),
    "custom": (METHOD_FILE, METHOD_WEIGHTS),
    "checkpoint": (
        CONFIG,
        "generation_config.json",
        MODEL_WEIGHTS,
        MODEL_WEIGHTS_INDEX,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
    ),
}
"""The files a run writes per output kind (for a previous manifest that has no ``files`` list)."""

# --- a sweep's folder -----------------------------------------------------------------------------------
RUN_RECORD = "sweep-run.json"
"""In each run folder of a sweep: the job that made it."""
DIFF_FILE = "diff.json"
"""In each run folder of a sweep: its diff against the base."""
DIFF_SCHEMA = "tokenlens-sweep-diff/1"
MAP_FILES = ("map.json", "map.md", "map.html", "map_files")
"""What a sweep writes into its folder: the map in three formats and its figures."""
