"""The simulated clock: device profiles (fedsim.clock.profiles), the clock that times each device's
round from them (fedsim.clock.clock), and its settings."""

from fedsim.clock.clock import Clock, SimOutcome, read_latency
from fedsim.clock.profiles import FLEETS, PROFILE_COLUMNS, FleetError, ProfileSet, check_spec, load_fleet
from fedsim.clock.settings import STRAGGLER_POLICIES, ClockSettings

__all__ = [
    "FLEETS",
    "PROFILE_COLUMNS",
    "STRAGGLER_POLICIES",
    "Clock",
    "ClockSettings",
    "FleetError",
    "ProfileSet",
    "SimOutcome",
    "check_spec",
    "load_fleet",
    "read_latency",
]
