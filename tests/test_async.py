"""--mode async (FedBuff) on the simulated clock: the staleness weights by hand, synchronous FedAvg
reproduced when nothing is stale, and the same tables on any host count and after a kill + resume."""

from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEngine, run_context, zero_weights

import fedsim
from fedsim.checkpoint import read_checkpoint, write_checkpoint
from fedsim.clock import Clock
from fedsim.clock.profiles import frame
from fedsim.experiment.config import Config, ConfigError
from fedsim.loop.asyncloop import AsyncCoordinator
from fedsim.loop.schedule import ScheduleSettings, staleness_weight
from fedsim.loop.settings import RunSettings
from fedsim.pipeline import Pipeline


def test_the_staleness_weights_are_the_formulas():
    assert [staleness_weight("poly:0.5", s) for s in (0, 1, 3, 8)] == pytest.approx([1.0, 2**-0.5, 0.5, 1 / 3])
    assert staleness_weight("poly:1", 4) == 0.2
    assert [staleness_weight("constant", s) for s in (0, 5, 50)] == [1.0, 1.0, 1.0]
    # hinge:A,B (FedAsync): 1 up to B, then 1 / (A (s - B) + 1)
    assert [staleness_weight("hinge:2,3", s) for s in (0, 3, 4, 6)] == [1.0, 1.0, 1 / 3, 1 / 7]
    with pytest.raises(ConfigError, match="--staleness must be poly:A, constant or hinge:A,B"):
        Config(mode="async", fleet="uniform", staleness="sqrt")


class Rows:
    def __init__(self):
        self.rounds, self.devices, self.checkpoints = [], [], []

    def record_round(self, round_row, device_rows, checkpoint, state=None, files=None):
        self.rounds.append(round_row)
        self.devices.extend(device_rows)
        self.checkpoints.append(checkpoint)

    def hold_round(self, round_row, device_rows):  # a round between commits (--commit-every)
        self.rounds.append(round_row)
        self.devices.extend(device_rows)


def test_a_stale_update_enters_weighted_by_hand():
    """Three fake devices (device d adds d to every weight it trains) start together on model 0 and
    take 1, 1.5 and 2.2 simulated seconds; one update a step (--buffer 1), poly:0.5.
      t=1    device 0 arrives, fresh:           x1 = x0 + 0                       = 0
             device 0 starts again, on x1
      t=1.5  device 1 (from x0, 1 step stale):  x2 = x1 + 2^-0.5 * ((x0 + 1) - x0) = 0.7071
             device 1 starts again, on x2
      t=2    device 0 (from x1, 1 step stale):  x3 = x2 + 2^-0.5 * ((x1 + 0) - x1) = 0.7071
      t=2.2  device 2 (from x0, 3 steps stale): x4 = x3 + 1/2 * ((x0 + 2) - x0)    = 1.7071"""
    config = Config(mode="async", fleet="uniform", devices=3, rounds=4, concurrency=3, buffer=1, dataset="toy_images")
    run = run_context(3, rounds=4)
    profiles = frame(
        np.arange(3), np.array([1.0, 1 / 1.5, 1 / 2.2]), np.full(3, 1e12), np.full(3, 1e12), np.ones(3), np.zeros(3)
    )
    clock = Clock(profiles, {"restore": 0.0, "train": 1000.0, "save": 0.0}, batch_size=4, local_epochs=1, seed=0)
    strategy = config.make_strategy().bind(run)
    pipeline = Pipeline.build(config.stage_settings, config.seed)
    rec = Rows()
    loop = AsyncCoordinator(
        config.section(RunSettings),
        run,
        FakeEngine(3),
        strategy,
        pipeline,
        write_checkpoint(zero_weights()),
        rec,
        clock,
        progress=False,
        schedule=config.section(ScheduleSettings),
    )
    loop.run()
    final = read_checkpoint(rec.checkpoints[-1])
    expected = 2**-0.5 + 1.0
    for tensor in final.values():
        np.testing.assert_allclose(tensor, expected, rtol=1e-6)
    seen = [(r["round"], r["device_id"], r["staleness"], r["start_version"]) for r in rec.devices]
    assert seen == [(1, 0, 0, 0), (2, 1, 1, 0), (3, 0, 1, 1), (4, 2, 3, 0)]
    assert [r["staleness_weight"] for r in rec.devices] == pytest.approx([1.0, 2**-0.5, 2**-0.5, 0.5])
    assert [round(r["sim_elapsed_s"], 6) for r in rec.rounds] == [1.0, 1.5, 2.0, 2.2]
    np.testing.assert_allclose([r["sim_round_s"] for r in rec.rounds], [1.0, 0.5, 0.5, 0.2], atol=1e-6)


def test_max_staleness_discards_and_records_why():
    config = Config(
        mode="async",
        fleet="uniform",
        devices=3,
        rounds=6,
        concurrency=3,
        buffer=1,
        max_staleness=2,
        dataset="toy_images",
    )
    run = run_context(3, rounds=6)
    profiles = frame(
        np.arange(3), np.array([1.0, 1 / 1.5, 1 / 3.2]), np.full(3, 1e12), np.full(3, 1e12), np.ones(3), np.zeros(3)
    )
    clock = Clock(profiles, {"restore": 0.0, "train": 1000.0, "save": 0.0}, batch_size=4, local_epochs=1, seed=0)
    rec = Rows()
    strategy = config.make_strategy().bind(run)
    pipeline = Pipeline.build(config.stage_settings, config.seed)
    loop = AsyncCoordinator(
        config.section(RunSettings),
        run,
        FakeEngine(3),
        strategy,
        pipeline,
        write_checkpoint(zero_weights()),
        rec,
        clock,
        progress=False,
        schedule=config.section(ScheduleSettings),
    )
    loop.run()
    stale = [r for r in rec.devices if r["status"] == "stale"]
    assert stale and all(r["staleness"] > 2 for r in stale)
    assert "over --max-staleness 2" in stale[0]["reason"]


def test_async_refuses_what_needs_rounds():
    with pytest.raises(ConfigError, match="--mode async needs --fleet"):
        Config(mode="async")
    with pytest.raises(ConfigError, match="--deadline does not apply to --mode async"):
        Config(mode="async", fleet="phones", deadline=10)
    with pytest.raises(ConfigError, match="--concurrency applies to --mode async"):
        Config(concurrency=4)
    settings = dict(dataset="toy_images", devices=4, rounds=1, progress=False, fleet="uniform", mode="async")
    for extra, words in (
        ({"strategy": "fedmedian"}, "strategy fedmedian"),
        ({"dp_clip": 1.0, "dp_noise_multiplier": 1.0}, "cannot run the dp stage: its accountant assumes"),
        ({"secagg": "secagg"}, "cannot run the secagg stage"),
    ):
        with pytest.raises(ConfigError, match=words):
            fedsim.run(out="/nonexistent/never", engine=fedsim.LocalEngine(), **settings, **extra)


# one setting that turns each registered stage on: a stage added without an entry fails the test below
STAGE_ON = {
    "verify": {},
    "attack": {"byzantine": 0.25, "attack": "signflip"},
    "personal": {"personal_layers": "head"},
    "dp": {"dp_clip": 1.0, "dp_noise_multiplier": 1.0},
    "ldp": {"ldp_epsilon": 8.0},
    "compress": {"compress": "q8"},
    "secagg": {"secagg": "secagg"},
    "screen": {"clip_update_norm": 1.0},
}


def test_every_registered_stage_runs_asynchronously_or_is_refused_by_its_declaration(tmp_path):
    """FedBuff's server steps call every hook a round does: a stage that declares it runs
    asynchronously does (its server step included), one that does not is refused in one line, naming why."""
    from fedsim.pipeline import REGISTERED

    assert set(STAGE_ON) == {s.name for s in REGISTERED}
    settings = dict(dataset="toy_images", toy_samples=10, devices=4, rounds=2, progress=False, fleet="uniform")
    for stage in REGISTERED:
        args = {**settings, "mode": "async", "concurrency": 2, "buffer": 2, **STAGE_ON[stage.name]}
        out = str(tmp_path / stage.name)
        if stage.asynchronous is True:
            run = fedsim.run(out=out, engine=fedsim.LocalEngine(), **args)
            assert stage.name in run.meta["pipeline"] and len(run.rounds) == 2, stage.name
        else:
            with pytest.raises(ConfigError, match=f"cannot run the {stage.name} stage: {stage.asynchronous}"):
                fedsim.run(out=out, engine=fedsim.LocalEngine(), **args)


# ---- real runs --------------------------------------------------------------------------------
# the simulated compute pinned (as if measured on a phone), not measured at each run's start here
LATENCY = Path(__file__).parent / "data" / "latency.json"
SYNC_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "devices_selected",
    "devices_reported",
    "devices_accepted",
    "samples",
    "bytes_up",
    "bytes_down",
    "sim_elapsed_s",
    "sim_energy_j",
]
DEVICE_COLUMNS = [
    "round",
    "device_id",
    "samples",
    "train_loss",
    "checkpoint_bytes",
    "status",
    "sim_compute_s",
    "sim_comm_s",
    "sim_finish_s",
    "sim_energy_j",
]
BASE = dict(
    dataset="toy_images",
    toy_samples=48,
    devices=8,
    per_round=4,
    rounds=4,
    seed=6,
    progress=False,
    fleet="uniform",
    batch_size=4,
    latency=str(LATENCY),
)


def test_async_with_nothing_stale_is_synchronous_fedavg(tmp_path):
    """An equal fleet (`uniform`: every phone alike, always there) and equal shards: the cohort of
    4 starts together and arrives together, so --buffer 4 steps on exactly a round's updates."""
    sync = fedsim.run(out=str(tmp_path / "sync"), engine=fedsim.LocalEngine(2), **BASE)
    fedbuff = fedsim.run(
        out=str(tmp_path / "async"),
        engine=fedsim.LocalEngine(2),
        mode="async",
        concurrency=4,
        buffer=4,
        staleness="constant",
        **BASE,
    )
    assert sync.devices["samples"].nunique() == 1  # equal shards
    pd_equal(fedbuff.rounds[SYNC_COLUMNS], sync.rounds[SYNC_COLUMNS])
    np.testing.assert_allclose(fedbuff.rounds["sim_round_s"], sync.rounds["sim_round_s"], rtol=1e-12)
    ours = fedbuff.devices.sort_values(["round", "device_id"]).reset_index(drop=True)
    theirs = sync.devices.sort_values(["round", "device_id"]).reset_index(drop=True)
    pd_equal(ours[DEVICE_COLUMNS], theirs[DEVICE_COLUMNS])
    assert (ours["staleness"] == 0).all()
    assert (fedbuff.path / "global.ckpt").read_bytes() == (sync.path / "global.ckpt").read_bytes()


def pd_equal(a, b):
    import pandas as pd

    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)


class StopAfter(fedsim.LocalEngine):
    """Interrupts the run at its `stop`-th engine call (a kill mid-run)."""

    def __init__(self, stop, hosts=2):
        super().__init__(hosts)
        self.stop, self.calls = stop, 0

    def run_round(self, round_num, *args, **kwargs):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return super().run_round(round_num, *args, **kwargs)


def test_async_gives_the_same_tables_on_any_host_count_and_after_a_resume(tmp_path):
    settings = {**BASE, "fleet": "skewed", "rounds": 6, "mode": "async", "concurrency": 5, "buffer": 2}
    settings["commit_every"] = "1"  # (every step, so that the cut below leaves some committed)
    columns = [*SYNC_COLUMNS, "sim_round_s", "staleness_mean", "devices_in_flight"]
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(1), **settings)
    two = fedsim.run(out=str(tmp_path / "two"), engine=fedsim.LocalEngine(2), **settings)
    pd_equal(two.rounds[columns], one.rounds[columns])
    pd_equal(two.devices.drop(columns=["host", "train_s"]), one.devices.drop(columns=["host", "train_s"]))
    assert (two.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()
    assert one.rounds["staleness_mean"].max() > 0  # some updates were stale
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAfter(5), **settings)
    cut = fedsim.load_run(tmp_path / "cut")
    assert 0 < len(cut.rounds) < 6
    resumed = fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))
    pd_equal(resumed.rounds[columns], one.rounds[columns])
    pd_equal(resumed.devices.drop(columns=["host", "train_s"]), one.devices.drop(columns=["host", "train_s"]))
    assert (resumed.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()


class Counting(fedsim.LocalEngine):
    def __init__(self, hosts=2):
        super().__init__(hosts)
        self.calls = 0

    def run_round(self, round_num, *args, **kwargs):
        self.calls += 1
        return super().run_round(round_num, *args, **kwargs)


@pytest.mark.parametrize("every", ["3", "0.05s"])
def test_a_kill_between_commits_loses_nothing_committed_and_the_resume_replays_the_rest(tmp_path, every):
    """--commit-every: a kill at any engine call leaves the folder at its last commit (the held steps
    are not on disk); the resume runs the steps since then again and ends with the tables and the
    checkpoint of a run never killed. A commit's part holds every step since the one before."""
    settings = {**BASE, "fleet": "skewed", "rounds": 8, "mode": "async", "concurrency": 5, "buffer": 2}
    settings["commit_every"] = every
    columns = [*SYNC_COLUMNS, "sim_round_s", "staleness_mean", "devices_in_flight"]
    counting = Counting()
    whole = fedsim.run(out=str(tmp_path / "whole"), engine=counting, **settings)
    parts = sorted(f.name for f in (whole.path / "rounds.parquet").iterdir())
    if every == "3":
        assert parts == ["round-00000003.parquet", "round-00000006.parquet", "round-00000008.parquet"]
    assert len(whole.rounds) == 8 and list(whole.rounds["round"]) == list(range(1, 9))
    cut_at = []
    for stop in range(2, counting.calls + 1):
        folder = tmp_path / f"cut{stop}"
        with pytest.raises(KeyboardInterrupt):
            fedsim.run(out=str(folder), engine=StopAfter(stop), **settings)
        if not folder.exists():  # killed before its first commit: nothing was written, nothing to resume
            continue
        cut = fedsim.load_run(folder)
        done = cut.meta["rounds_completed"]
        cut_at.append(done)
        assert list(cut.rounds["round"]) == list(range(1, done + 1))  # exactly the committed steps
        if every == "3":
            assert done % 3 == 0
        pd_equal(cut.rounds[columns], whole.rounds[columns].iloc[:done])
        resumed = fedsim.resume(folder, engine=fedsim.LocalEngine(2))
        pd_equal(resumed.rounds[columns], whole.rounds[columns])
        drop = ["host", "train_s"]
        pd_equal(resumed.devices.drop(columns=drop), whole.devices.drop(columns=drop))
        assert (resumed.path / "global.ckpt").read_bytes() == (whole.path / "global.ckpt").read_bytes()
    assert any(0 < done < 8 for done in cut_at)  # some kills fell between commits


def test_commit_every_takes_rounds_or_seconds():
    assert Config(commit_every="5").section(RunSettings).commit_every == "5"
    for bad in ("0", "-1s", "often", "2m"):
        with pytest.raises(ConfigError, match="--commit-every must be a number of rounds"):
            Config(commit_every=bad)


def test_model_versions_in_flight_are_stored_once_each_and_a_finished_run_extends(tmp_path):
    """A server step writes the one new model version, not every version in flight; the state a
    resume reads names the versions by id; a finished run's server_state.npz holds them all, so
    extending it equals the straight run."""
    from fedsim.results.state import BATCH, MARK, ROWS_DIR, named_rows, read_state

    settings = {**BASE, "fleet": "skewed", "mode": "async", "concurrency": 5, "buffer": 2, "eval_every": 1}
    settings["commit_every"] = "1"  # (each step stores the version it made)
    del settings["rounds"]
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAfter(6), rounds=8, **settings)
    resume = tmp_path / "cut" / "resume"
    done = fedsim.load_run(tmp_path / "cut").meta["rounds_completed"]
    state_file = resume / f"round-{done}.server_state.npz"
    with np.load(state_file) as saved:
        assert "async.version_rows" + MARK in saved.files and "async.version_rows" not in saved.files
        ids = saved["async.version_rows" + MARK].tolist()
        batches = saved["async.version_rows" + BATCH]
    assert len(ids) > 1  # several versions in flight, stored by the steps that made them
    assert {f.name for f in (resume / ROWS_DIR).iterdir()} >= {f"async.version_rows@{b}.npy" for b in batches}
    # and nothing else: the files no kept state names were pruned (the writer knows what its states name)
    kept = set().union(*(named_rows(f) for f in resume.glob("round-*.server_state.npz")))
    assert {f.name for f in (resume / ROWS_DIR).iterdir()} == kept
    assert (
        len(set(batches.tolist())) > 1 and np.load(resume / ROWS_DIR / f"async.version_rows@{done}.npy").shape[0] == 1
    )
    rows = read_state(state_file)["async.version_rows"]
    assert rows.shape[0] == len(ids) and rows.dtype == np.float32

    straight = fedsim.run(out=str(tmp_path / "straight"), engine=fedsim.LocalEngine(2), rounds=8, **settings)
    short = fedsim.run(out=str(tmp_path / "short"), engine=fedsim.LocalEngine(2), rounds=5, **settings)
    assert not (short.path / "resume").exists()
    with np.load(short.path / "server_state.npz") as saved:
        assert "async.version_rows" in saved.files and not any(k.endswith(MARK) for k in saved.files)
    extended = fedsim.resume(short.path, rounds=8, engine=fedsim.LocalEngine(2))
    pd_equal(
        extended.rounds[SYNC_COLUMNS[:1] + ["sim_elapsed_s", "staleness_mean"]],
        straight.rounds[["round", "sim_elapsed_s", "staleness_mean"]],
    )
    assert (extended.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()


def test_a_stale_update_moved_and_summed_in_one_pass_equals_numpy_bit_for_bit():
    """PartialSum.add_moved (one compiled pass) against `add` of the numpy expression it replaces, with
    coefficients that fill the groups and spill into the scaled sum, over many magnitudes."""
    from fedsim.strategies.aggregate import PartialSum

    rng = np.random.default_rng(3)
    n = 20_011
    for trial in range(6):
        numpy_sum, moved = PartialSum(max_groups=2), PartialSum(max_groups=2)
        current = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(np.float32).astype(np.float64)
        for k in range(7):
            row, start = ((rng.standard_normal(n) * 10.0 ** rng.integers(-4, 2)).astype(np.float32) for _ in "ab")
            weight, c = float(rng.uniform(0.01, 1)), float(rng.choice([0.25, 0.5, 0.7]) if k % 3 else rng.uniform())
            update = np.subtract(row, start, dtype=np.float64)
            update *= weight
            update += current
            numpy_sum.add(update, c)
            moved.add_moved(row, start, weight, current, c)
        assert moved.scaled is not None and len(moved.groups) == 2  # every way into the sum was taken
        a, b = numpy_sum.partial(), moved.partial()
        assert a.weighted_sum.tobytes() == b.weighted_sum.tobytes(), trial
        assert (numpy_sum.total, numpy_sum.count) == (moved.total, moved.count)
