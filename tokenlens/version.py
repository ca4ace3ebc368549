"""The tokenlens version: the one place it is written (``pyproject.toml`` reads it from here), importable by
every layer without the public facade."""

__version__ = "0.1.0"
