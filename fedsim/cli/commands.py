"""The `fedsim` commands: each takes the parsed arguments, does its work through the public API and
prints what a person needs (where results are, what to run next)."""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

from fedsim.cli.parser import SWEEP_OWN
from fedsim.core.settings import ConfigError, flag
from fedsim.experiment.config import Config, config_fields, flatten_settings


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {name: getattr(args, name) for name in config_fields() if getattr(args, name, None) is not None}
    if args.config:
        return Config.from_toml(args.config, **overrides)
    return Config(**overrides)


def run(args: argparse.Namespace) -> int:
    import fedsim

    if args.resume:
        fields = config_fields()
        others = [n for n, f in fields.items() if not f.resumable and getattr(args, n, None) is not None]
        if others or args.config:
            flags = ", ".join(flag(n) for n in others) or "--config"
            may = ", ".join(flag(n) for n, f in fields.items() if f.resumable)
            raise ConfigError(f"--resume uses the run's own settings; drop {flags} (only {may} may change)")
        engine = fedsim.LocalEngine(args.hosts or 1) if args.engine == "local" else None
        changes = {n: getattr(args, n) for n, f in fields.items() if f.resumable}
        result = fedsim.resume(args.resume, engine=engine, progress=not args.no_progress, **changes)
        config = Config.from_dict(result.meta["config"])
    else:
        config = config_from_args(args)
        if args.engine == "local" and config.address:
            raise ConfigError("--engine local runs in this process; drop --address (or use --engine ray)")
        engine = fedsim.LocalEngine(config.hosts or 1) if args.engine == "local" else None
        result = fedsim.run(config, engine=engine, progress=not args.no_progress)
    if result.meta.get("stopped"):  # a stage ended the run before a round (its budget spent)
        print(f"fedsim: stopped ({result.meta['status']}): {result.meta['stopped']}")
    for line in summary(result, config):
        print(f"fedsim: {line}")
    return 0


def summary(result: Any, config: Config) -> list[str]:
    """What a finished `fedsim run` says: rounds (round 0, the initial evaluation, is not a round),
    accuracy, simulated hours and energy, a hint when nothing was accepted, and how to load it."""
    rounds = result.rounds[result.rounds["round"] >= 1]
    scored = rounds.dropna(subset=["test_accuracy"])
    lines = [f"{len(rounds)} rounds on {config.devices} devices"]
    if len(scored):
        last = scored.iloc[-1]
        lines[0] += f"; final test accuracy {last.test_accuracy:.4f}, test loss {last.test_loss:.4f}"
    if "sim_elapsed_s" in rounds and rounds["sim_elapsed_s"].notna().any():
        hours = float(rounds["sim_elapsed_s"].max()) / 3600
        energy = float(rounds["sim_energy_j"].sum()) / 1000 if "sim_energy_j" in rounds else float("nan")
        lines.append(f"simulated time {hours:.3g} h; the phones spent {energy:.4g} kJ")
    if len(rounds) and int(rounds["devices_accepted"].sum()) == 0:
        reasons = result.devices.loc[result.devices["status"] == "rejected", "reason"]
        why = f" (e.g. {reasons.iloc[0]})" if len(reasons) else ""
        lines.append(f"no update was accepted in any round{why}: the model never changed")
    lines.append(f"results in {result.path}")
    python = Path(sys.prefix) / "bin" / "python"  # the interpreter fedsim is installed in (.venv after make)
    lines.append(f"{python} -c \"import fedsim; r = fedsim.load_run('{result.path}'); print(r.rounds)\"")
    if result.meta.get("mlflow_run_id") and config.mlflow:
        lines.append(
            f"MLflow run {result.meta['mlflow_run_id']} in experiment "
            f"{config.mlflow_experiment or config.run_name} (mlflow ui --backend-store-uri {config.mlflow})"
        )
    return lines


def _ints(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} takes comma-separated integers, got {text!r}") from None


def sweep_values(name: str, text: str) -> list[Any]:
    """A sweep flag's comma-separated values, each of the setting's type. A data set spec such as
    synthetic:1,1 keeps its own comma."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if name == "dataset":  # synthetic:ALPHA,BETA: glue BETA back to its spec
        merged: list[str] = []
        for p in parts:
            if (
                merged
                and merged[-1].startswith("synthetic:")
                and "," not in merged[-1]
                and (p.replace(".", "", 1).isdigit())
            ):
                merged[-1] += "," + p
            else:
                merged.append(p)
        parts = merged
    kind = config_fields()[name].type
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"{flag(name)} takes comma-separated values of type {getattr(kind, '__name__', kind)}, got {text!r}"
        ) from None


def sweep(args: argparse.Namespace) -> int:
    from fedsim.experiment.sweep import resume_sweep
    from fedsim.experiment.sweep import sweep as run_sweep
    from fedsim.strategies import strategy_params

    if args.resume:
        table = resume_sweep(args.resume, progress=not args.no_progress)
        folder = Path(args.resume)
    else:
        file_values: dict[str, Any] = {}
        grid: dict[str, list[Any]] = {}
        if args.config:
            try:
                raw = tomllib.loads(Path(args.config).read_text())
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"--config {args.config}: {e}") from None
            table_grid = raw.pop("sweep", {})
            if not isinstance(table_grid, dict):
                raise ConfigError(f"--config {args.config}: [sweep] must be a table of lists")
            grid.update({k: v if isinstance(v, list) else [v] for k, v in table_grid.items()})
            file_values = flatten_settings(raw)
        overrides: dict[str, Any] = {"name": args.name} if args.name else {}
        for name in config_fields():
            text = getattr(args, name, None)
            if name in SWEEP_OWN or text is None:
                continue
            values = sweep_values(name, text)
            if len(values) == 1:
                overrides[name] = values[0]
                grid.pop(name, None)
            else:
                grid[name] = values
        if args.seeds:
            grid["seed"] = _ints(args.seeds, "--seeds")
        if args.partitions:
            grid["partition"] = [p.strip() for p in args.partitions.split(",") if p.strip()]
        for key in [k for k, v in grid.items() if len(v) == 1 and k not in ("devices", "partition", "seed")]:
            file_values[key] = grid.pop(key)[0]
        # Comparing strategies: their settings stay in the grid, where each point keeps only those its
        # strategy takes (fedsim.experiment.sweep); in the base they would be checked against the first strategy.
        comparing = len(grid.get("strategy", [])) > 1
        params = strategy_params()
        if comparing:
            for key in params:
                for source in (overrides, file_values):
                    if key in source and key not in grid:
                        grid[key] = [source.pop(key)]
        firsts = {k: v[0] for k, v in grid.items() if not (comparing and k in params)}
        if "devices" in grid:  # the base is checked as the largest fleet: --per-round is capped per point
            firsts["devices"] = max(grid["devices"])
        base = Config(**{**file_values, **overrides, **firsts})
        table = run_sweep(base, out=args.out, progress=not args.no_progress, grid=grid, engine=args.engine)
        folder = Path(table.attrs["folder"])
    failed = table[table["status"] == "failed"] if "status" in table else table.iloc[:0]
    print(f"fedsim: sweep of {table['point'].nunique()} points, {failed['point'].nunique()} failed")
    for _, row in failed.iterrows():
        print(f"fedsim: failed {row['point']}: {row['error']}")
    print(f"fedsim: sweep in {folder}; fedsim report {folder}")
    return 0


def analysis(args: argparse.Namespace) -> int:
    from fedsim.report.analysis import plot, report

    if args.command == "plot":
        for path in plot(args.path, args.out):
            print(f"fedsim: wrote {path}")
    else:
        print(report(args.path))
    return 0


def inspect(args: argparse.Namespace) -> int:
    from fedsim.artifact import inspect as report_on

    if args.parity < 0 or args.repeats < 1:
        raise ConfigError("--parity must be >= 0 and --repeats >= 1")
    from fedsim.model.builders import MODELS, ArtifactRecipe

    if args.path in MODELS and not Path(args.path).exists():  # a built-in model, without a run first
        from fedsim.model import cache

        recipe = ArtifactRecipe(builder=MODELS[args.path], runtime=args.runtime)
        made = "exporting the PyTorch twin of" if args.runtime == "executorch" else "converting"
        print(
            f"fedsim: {made} the built-in {args.path} for {recipe.task.describe()} (Fashion-MNIST's task) ...",
            file=sys.stderr,
            flush=True,
        )
        report = report_on(cache.build(recipe), parity=args.parity, repeats=args.repeats, recipe=recipe)
    else:
        report = report_on(args.path, parity=args.parity, repeats=args.repeats)
    print(report)
    if args.json:
        report.write(args.json)
        print(f"fedsim: wrote {args.json}")
    return 0


def partition(args: argparse.Namespace) -> int:
    from fedsim.data.skew import partition_report, plot_partition
    from fedsim.results import load_run

    run = load_run(args.path)
    if run.partition.empty:
        raise ConfigError(f"{args.path}: no partition.parquet (the run stopped before its data was split)")
    print(partition_report(run.partition))
    if args.plot:
        title = f"{run.config.get('partition')}, {run.config.get('devices')} devices: {run.path.name}"
        print(f"fedsim: wrote {plot_partition(run.partition, str(run.path / 'partition.png'), title)}")
    return 0


def data(args: argparse.Namespace) -> int:
    from fedsim.data import fetch_fashion_mnist, find_fashion_mnist

    if args.data_command == "fetch":
        print(f"fedsim: Fashion-MNIST in {fetch_fashion_mnist(args.dest)}")
    else:
        print(find_fashion_mnist())
    return 0
