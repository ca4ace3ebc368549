"""The options every subcommand shares, declared once: which model to load and how, and where output goes.

Each subcommand adds them to its parser with :meth:`ModelOptions.add_arguments` /
:meth:`OutputOptions.add_arguments` and reads them back as a typed, validated dataclass with ``from_args``;
no subcommand redeclares ``--dtype`` or builds an ``argparse.Namespace`` by hand. Where a subcommand needs a
different default (``diff`` and ``sweep`` load in float32, so that their distributions are not rounded to
16 bits) it says so in one argument of ``add_arguments``, and ``--help`` shows it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenlens.errors import TokenlensError

DEFAULT_MODEL = "smollm2-135m"
FILE_FORMATS = ("html", "markdown")
"""Formats that write a file (``--out`` needed); ``markdown`` writes its figures beside it."""


@dataclass(frozen=True)
class ModelOptions:
    """Which model a subcommand loads and how (the arguments of :func:`tokenlens.load`).

    Attributes:
        model: The model reference (zoo name, folder, ``.gguf`` file, adapter folder, hub id).
        base: The base of an adapter or trainer output (default: the one it names).
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        device_map: ``from_pretrained``'s ``device_map`` (shard over GPUs), or ``None``.
        quantize: ``4bit``, ``8bit`` or ``None``.
        trust_remote_code: Let a checkpoint's own code run.
        allow_pickle: Read pickle weight files.
    """

    model: str = DEFAULT_MODEL
    base: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    quantize: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @staticmethod
    def add_arguments(
        p: argparse.ArgumentParser,
        *,
        model_flag: str = "--model",
        model_help: str | None = None,
        base_help: str | None = "base model of an adapter or trainer output (default: the one it names)",
        dtype: str = "auto",
        sharding: bool = True,
        trust: bool = True,
    ) -> None:
        """Add the model flags to ``p``.

        Args:
            model_flag: The flag naming the model (``diff`` calls it ``--tuned``, and then it is required).
            model_help: Its help text.
            base_help: ``--base``'s help text (``None``: no ``--base``, the model is a base itself).
            dtype: The default ``--dtype``.
            sharding: Offer ``--device-map`` and ``--quantize`` (subcommands that load one model).
            trust: Offer ``--trust-remote-code`` and ``--allow-pickle`` (off where child processes load
                the model again and could not honour them).
        """
        required = model_flag != "--model"
        references = f"zoo name, model or adapter folder, .gguf file or hub id (default: {DEFAULT_MODEL})"
        p.add_argument(
            model_flag,
            dest="model",
            required=required,
            default=None if required else DEFAULT_MODEL,
            help=model_help or references,
        )
        if base_help is not None:
            p.add_argument("--base", help=base_help)
        dtypes = "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16"
        p.add_argument("--dtype", default=dtype, help=f"{dtypes} (default {dtype})")
        p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
        if sharding:
            sharded = "shard over GPUs with from_pretrained's device_map (e.g. auto)"
            p.add_argument("--device-map", help=sharded)
            quantised = "load weights quantised with bitsandbytes"
            p.add_argument("--quantize", choices=("4bit", "8bit"), help=quantised)
        if trust:
            code = "allow a checkpoint's own code to run"
            p.add_argument("--trust-remote-code", action="store_true", help=code)
            pickle = "allow pickle weight files (they can run code)"
            p.add_argument("--allow-pickle", action="store_true", help=pickle)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        """The options :meth:`add_arguments` added, read back from parsed arguments."""
        return cls(
            model=args.model,
            base=getattr(args, "base", None),
            dtype=args.dtype,
            device=args.device,
            device_map=getattr(args, "device_map", None),
            quantize=getattr(args, "quantize", None),
            trust_remote_code=getattr(args, "trust_remote_code", False),
            allow_pickle=getattr(args, "allow_pickle", False),
        )

    def load(self) -> Any:
        """:func:`tokenlens.load` the model (transformers' own progress bars and chatter silenced)."""
        quiet_transformers()
        from tokenlens.models.loading import load

        return load(
            self.model,
            base=self.base,
            dtype=self.dtype,
            device=self.device,
            device_map=self.device_map,
            quantize=self.quantize,
            trust_remote_code=self.trust_remote_code,
            allow_pickle=self.allow_pickle,
        )


def quiet_transformers() -> None:
    """Silence transformers' progress bars and warnings: tokenlens prints its own one-line notes."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@dataclass(frozen=True)
class OutputOptions:
    """What a subcommand prints or writes: ``--format``, ``--out``, ``--force``.

    Attributes:
        format: The format (``md`` is read as ``markdown``).
        out: The file to write, or ``None`` for standard output.
        force: Overwrite an existing ``out`` (and a Markdown report's figures folder).
    """

    format: str = "table"
    out: Path | None = None
    force: bool = False

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser, formats: tuple[str, ...], help: str) -> None:
        """Add ``--format`` (one of ``formats``, default the first), ``--out`` and ``--force`` to ``p``."""
        p.add_argument("--format", choices=formats, default=formats[0], help=help)
        where = "write the output to PATH (atomically) instead of stdout"
        p.add_argument("--out", metavar="PATH", help=where)
        p.add_argument("--force", action="store_true", help="overwrite an existing --out file")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OutputOptions:
        """The output options, checked before any model loads: a file format needs ``--out``, and ``--out``
        (with a Markdown report's figures folder) must be writable and new unless ``--force``.

        Raises:
            TokenlensError: A file format without ``--out``, or an ``--out`` that may not be written.
        """
        fmt = "markdown" if args.format == "md" else args.format
        if fmt in FILE_FORMATS and not args.out:
            raise TokenlensError(f"--format {args.format} writes a file: give --out PATH")
        out = None
        if args.out:
            from tokenlens.io import check_output_path

            out = check_output_path(args.out, force=args.force, figures=fmt == "markdown")
        return cls(format=fmt, out=out, force=args.force)

    def terminal(self, parts: list) -> str | None:
        """Rich renderables as the text to write to ``out``, or printed to the terminal (``None``)."""
        if self.out is not None:
            from tokenlens.report.kit.terminal import renderables_to_text

            return renderables_to_text(parts)
        from rich.console import Console

        console = Console()
        for part in parts:
            console.print(part)
        return None

    def figure_paths(self, figures: dict) -> dict[str, str]:
        """Save a Markdown report's figures into its folder beside ``out``; ``{key: relative PNG path}``."""
        from tokenlens.io import figures_folder
        from tokenlens.report.plots import save_figure

        folder = figures_folder(self.out)
        paths = {}
        for key, figure in figures.items():
            png, _ = save_figure(figure, folder / key)
            paths[key] = f"{folder.name}/{png.name}"
        return paths

    def write(self, text: str | None) -> None:
        """Write ``text`` to ``out`` atomically (saying so on stderr), or to stdout; ``None``: nothing."""
        if text is None:
            return
        if self.out is None:
            sys.stdout.write(text)
            return
        from tokenlens.io import atomic_write_text

        atomic_write_text(self.out, text)
        print(f"tokenlens: wrote {self.out}", file=sys.stderr)
