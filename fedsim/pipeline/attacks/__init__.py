"""The Byzantine attacks of --attack, one file each, registered by name; the Attack stage
(fedsim.pipeline.attack) picks the attackers and calls the attack's hooks, naming none. A new attack
is a new file that decorates its class with @register, and its module's name below."""

from __future__ import annotations

import importlib

from fedsim.pipeline.attacks.base import REGISTERED, AttackKind, register

# the registry: one line per attack module of this package
MODULES = ("signflip", "gaussian", "labelflip", "alie")

__all__ = ["MODULES", "AttackKind", "kinds", "register"]


def kinds() -> dict[str, type[AttackKind]]:
    """Every registered attack by its --attack value, in MODULES order."""
    if not REGISTERED:
        for module in MODULES:
            importlib.import_module(f"{__name__}.{module}")
    return dict(REGISTERED)
