"""How results show themselves in Jupyter without importing the renderers, which sit above them.

Result dataclasses are at the bottom of tokenlens: they import no engine and no renderer, so every layer can
use them. The HTML renderers are near the top. A result's ``_repr_html_`` asks this registry for the
renderer of its type; the top-level package registers each renderer by name (``"module:function"``), and the
renderer's module is imported only when a notebook first displays such a result.
"""

from __future__ import annotations

import importlib
from typing import Any

_RENDERERS: dict[str, str] = {}
"""Qualified type name (``tokenlens.attribution.result.LogitAttribution``) -> ``"module:function"``."""


def register_html(type_name: str, renderer: str) -> None:
    """Show objects of the type named ``type_name`` (or a subclass) with ``renderer`` (``"module:function"``,
    a function of the object returning an HTML fragment)."""
    module, _, function = renderer.partition(":")
    if not module or not function:
        raise ValueError(f"renderer {renderer!r} is not 'module:function'")
    _RENDERERS[type_name] = renderer


def html_for(obj: Any) -> str | None:
    """The HTML fragment of ``obj`` from the renderer registered for its type, or ``None`` without one
    (Jupyter then shows its ``repr``)."""
    for cls in type(obj).__mro__:
        renderer = _RENDERERS.get(f"{cls.__module__}.{cls.__qualname__}")
        if renderer is not None:
            module, _, function = renderer.partition(":")
            return getattr(importlib.import_module(module), function)(obj)
    return None
