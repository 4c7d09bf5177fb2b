"""One device's state as its round sees it (the host stores it: fedsim.core.segments)."""

from __future__ import annotations

from typing import Any

import numpy as np


class DeviceState:
    """One device's state as its round sees it: what it kept from its last round (read when first
    asked for) and what it keeps for its next (`put`; `changed` is what the host stores)."""

    def __init__(self, load: Any = None, take: Any = None) -> None:
        self._load = load  # () -> dict of what it kept, or None when it kept nothing
        self._take = take  # () -> the same, the device's own to change in place (or None: it is not)
        self._kept: dict[str, np.ndarray] | None = None
        self.changed: dict[str, np.ndarray] = {}

    def kept(self) -> dict[str, np.ndarray]:
        if self._kept is None:
            self._kept = dict(self._load()) if self._load is not None else {}
        return self._kept

    def get(self, key: str) -> np.ndarray | None:
        """What the device keeps under `key` now (this round's value once put)."""
        if key in self.changed:
            return self.changed[key]
        return self.kept().get(key)

    def own(self, key: str) -> np.ndarray | None:
        """`get`, for a caller that will overwrite it and `put` the result (what it kept is not read
        again this round): where the host can hand it over, writable and changed in place; else as
        `get` gives it (read-only where the host holds it in memory: the caller makes a new array)."""
        if key not in self.changed and self._kept is None and self._take is not None:
            taken = self._take()
            self._kept = dict(taken) if taken is not None else None
        return self.get(key)

    def put(self, key: str, value: np.ndarray) -> None:
        self.changed[key] = value

    def merged(self) -> dict[str, np.ndarray]:
        """Everything it keeps after this round: what it kept, with this round's changes."""
        return {**self.kept(), **self.changed}
