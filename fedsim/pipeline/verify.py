"""Verification: the server's checks on every upload before anything else reads it. The host's reader
has checked every block's crc32c; this stage checks the weights' names, shapes and dtypes against the
model and that every value is finite. Always on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedsim.checkpoint import CheckpointError, check_weights, flatten
from fedsim.core.settings import Section
from fedsim.pipeline.base import Rejected, Stage, Upload, UploadContext


@dataclass(frozen=True)
class VerifySettings(Section):
    section = "verify"


class Verify(Stage):
    name = "verify"
    Settings = VerifySettings
    where = "server"
    timed = False  # every upload's checks: part of a plain round, not a stage's added cost

    @classmethod
    def make(cls, settings: Any, seed: int = 0) -> Verify:
        return cls()

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        try:
            check_weights(up.weights, ctx.spec, up.flat)
        except CheckpointError as e:
            raise Rejected(str(e)) from None
        if up.flat is None:  # the reader's first file (or an odd one): parsed, not yet a vector
            up.flat = flatten(up.weights, ctx.spec)
        return up
