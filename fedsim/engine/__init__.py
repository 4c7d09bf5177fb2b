"""How device work is executed. `base` is the interface the coordinator sees; `local` runs hosts
in-process (tests, debugging); `ray` runs them as Ray actors (the only module that imports Ray)."""

from fedsim.engine.base import DeviceReport, Engine, HostSettings, deal
from fedsim.engine.local import LocalEngine

__all__ = ["DeviceReport", "Engine", "HostSettings", "LocalEngine", "RayEngine", "deal"]


def __getattr__(name: str):
    if name == "RayEngine":
        from fedsim.engine.ray import RayEngine

        return RayEngine
    raise AttributeError(name)
