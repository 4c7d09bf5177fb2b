"""How device work is executed. `base` is the interface the coordinator sees; `local` runs hosts
in-process (tests, debugging); `ray` runs them as Ray actors (with `ray_session`, the only modules
that import Ray). `layout` lays the run's data out for the hosts, `schedule` deals devices to them."""

from typing import Any

from fedsim.engine.base import DeviceReport, Engine
from fedsim.engine.local import LocalEngine
from fedsim.engine.schedule import deal
from fedsim.engine.settings import HostSettings

__all__ = ["DeviceReport", "Engine", "HostSettings", "LocalEngine", "RayEngine", "deal"]


def __getattr__(name: str) -> Any:  # RayEngine is imported on first use: Ray is heavy
    if name == "RayEngine":
        from fedsim.engine.ray import RayEngine

        return RayEngine
    raise AttributeError(name)
