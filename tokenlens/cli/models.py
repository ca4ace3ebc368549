"""``tokenlens models``: the offline zoo and the supported architectures."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the offline zoo models and the supported architectures",
        description="List the named offline models (--model NAME) and the architectures tokenlens supports.",
        epilog="examples:\n  tokenlens models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tokenlens.models.specs import SPECS
    from tokenlens.models.zoo import DEFAULT_MODEL, ZOO

    print("zoo models (offline; built or converted into the cache on first use):")
    for name, entry in ZOO.items():
        mark = " (default)" if name == DEFAULT_MODEL else ""
        print(f"  {name:<14} {entry.summary}{mark}")
    print("supported architectures (config.model_type):")
    for spec in SPECS:
        print(f"  {spec.family:<14} {', '.join(spec.model_types)}")
    print(
        "also: any local checkpoint folder, .gguf file, PEFT adapter folder or hub id of those architectures"
    )
    return 0
