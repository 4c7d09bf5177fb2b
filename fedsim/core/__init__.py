"""What every part of fedsim stands on and that imports nothing else of it: how settings are declared
(`settings`), the task contract (`task`), the facts of a prepared run (`context`) and numpy's seeded
draws, also compiled (`seeded`, `seeded_kernels`)."""
