"""What an uplink encoding of --compress is: its flag values, the options it takes, its bytes on the
wire, and the round trip (encode on the device, decode onto the global model on the server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from fedsim.pipeline.base import Upload, UploadContext

REGISTERED: list[type[Codec]] = []


class Codec:
    """One encoding. `names`: the --compress values it answers (for the help and errors); `options`:
    the --compress settings it takes besides its name (rotate, compress_entropy); `columns`: the
    devices-table columns (numbers) it fills, with an option that turns them on."""

    names: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[dict[str, str]] = {}  # column -> the option that records it
    hint: ClassVar[str] = ""  # what its values mean, where the names do not say ("topk:F with 0 < F <= 1")

    @classmethod
    def parse(cls, text: str) -> Codec | None:
        """This encoding for the --compress value `text`, or None if the value is not one of its own."""
        return cls() if text in cls.names else None

    def encode(self, up: Upload, ctx: UploadContext, settings: Any) -> tuple[bytes, np.ndarray]:
        """(the payload the device sends, what the server decodes it to: the update onto the float32
        global model). `settings`: the compress section. May read and keep device state (`up.state`)
        and record values of its columns (`up.metrics`)."""
        raise NotImplementedError

    def nbytes(self, params: int, settings: Any) -> int:
        """The payload's length for a model of `params` parameters (what encode's payload measures)."""
        raise NotImplementedError

    def adopt(self, saved: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
        """Device state the Compress stage of an earlier fedsim saved on the coordinator for this codec
        (its part of a resumed run's server state), as each device's own; by device id."""
        return {}


def register(cls: type[Codec]) -> type[Codec]:
    """Class decorator: the codec answers --compress from now on."""
    REGISTERED.append(cls)
    return cls
