"""STUB for branch r2-backbone only: the real module (registry-packaged backbones such as `mpnet`,
fetched and unpacked by one install step) comes from branch r2-mpnet; take that one at merge.
mtl/backbone.py needs these two names to exist."""

from __future__ import annotations

from pathlib import Path

from mtl.errors import ConfigError

FETCHABLE: dict[str, object] = {}


def fetched_backbone(name: str) -> Path:
    raise ConfigError(f"backbone.name '{name}' is not a fetchable backbone.")
