"""The wiring of a run: its settings (`config`, `config_keys`), one run on an engine (`launch`),
`fedsim.run` / `fedsim.resume` (`simulation`) and sweeps (`sweep`)."""
