"""Personal models: personalised evaluation, partial sharing (FedPer, FedRep), Ditto, local training,
--init-from; real runs of the artifact on the in-process engine (the real data set: test_personal_real)."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import StopAt

import fedsim
from fedsim.checkpoint import read_checkpoint, unpack
from fedsim.checkpoint.tfv1_write import write_tfv1
from fedsim.experiment.config import ConfigError
from fedsim.model.signatures import PACKED

RUN = dict(
    dataset="toy_images",
    toy_samples=40,
    devices=6,
    rounds=3,
    seed=3,
    partition="classes:2",
    device_test_fraction=0.25,
    progress=False,
)


def run(tmp_path, name, hosts=1, **kw):
    return fedsim.run(out=str(tmp_path / name), engine=fedsim.LocalEngine(hosts), **{**RUN, **kw})


def flat_of(path):
    return np.concatenate([v.ravel() for v in read_checkpoint(path.read_bytes()).values()])


def named(run_, what="global.ckpt"):
    layout = [(n, tuple(s)) for n, s in run_.artifact["layout"]]
    return unpack(read_checkpoint((run_.path / what).read_bytes()), layout)


def test_every_run_can_score_each_device_global_and_fine_tuned(tmp_path):
    """FedAvg + --personal-eval-epochs: each device's row carries the global model's accuracy on its
    own test split and its fine-tuned model's; the round's spread is theirs; nothing of it is kept."""
    plain = run(tmp_path, "plain")
    tuned = run(tmp_path, "tuned", personal_eval_epochs=2)
    rows = tuned.devices.query("round == 3")
    assert len(rows) == RUN["devices"] and rows["personal_accuracy"].between(0, 1).all()
    assert np.allclose(rows["global_accuracy"], rows["test_accuracy"])  # the same model, the same split
    last = tuned.rounds.iloc[-1]
    assert last["personal_acc_mean"] == pytest.approx(rows["personal_accuracy"].mean())
    assert last["personal_acc_p50"] == pytest.approx(rows["personal_accuracy"].median())
    assert last["personal_gain_share"] == pytest.approx((rows["personal_accuracy"] > rows["global_accuracy"]).mean())
    assert last["personal_acc_mean"] > last["global_acc_mean"]  # 2 labels a device: fine-tuning helps
    # the evaluation changed nothing of the run: the same model, and no device state
    assert (tuned.path / "global.ckpt").read_bytes() == (plain.path / "global.ckpt").read_bytes()
    assert tuned.device_state_index() == {}


def test_a_sample_of_devices_is_evaluated_and_says_so(tmp_path):
    r = run(tmp_path, "s", devices=8, per_round=2, personal_eval_epochs=1, personal_eval_devices=3)
    for rnd in (1, 2, 3):
        scored = r.devices.query(f"round == {rnd}").dropna(subset=["personal_accuracy"])
        assert len(scored) == 3
    # a device evaluated without taking part in the round has a row of its own
    assert set(r.devices["status"]) >= {"ok", "evaluated"}


def test_partial_sharing_sends_only_the_shared_weights_and_keeps_the_head_on_the_device(tmp_path):
    r = run(tmp_path, "fedper", strategy="fedper")
    layout = [(n, tuple(s)) for n, s in r.artifact["layout"]]
    head = [n for n, _ in layout if "classifier" in n]
    assert r.meta["stages"]["personal"]["personal_layers"] == head
    shared = sum(int(np.prod(s)) for n, s in layout if n not in head)
    payload = len(write_tfv1({PACKED: np.zeros(shared, np.float32)}))
    ok = r.devices.query("status == 'ok'")
    assert (ok["checkpoint_bytes"] == payload).all()
    assert r.rounds["bytes_up"].tolist() == [payload * RUN["devices"]] * 3
    assert r.rounds["bytes_down"].tolist() == [payload * RUN["devices"]] * 3
    # the global model's head is never averaged (it stays the initial one); each device's own head is
    # its state, all different, the hidden layer shared
    from fedsim.device import Runner

    initial_bytes = Runner((r.path / "model.tflite").read_bytes()).initial_checkpoint(tmp_path)
    final, initial = named(r), unpack(read_checkpoint(initial_bytes), layout)
    for n in head:
        np.testing.assert_array_equal(final[n], initial[n])
    heads = [r.device_state(d)["personal.layers"] for d in range(RUN["devices"])]
    assert all(h.size == sum(int(np.prod(s)) for n, s in layout if n in head) for h in heads)
    assert len({h.tobytes() for h in heads}) == RUN["devices"]
    assert r.rounds["personal_acc_mean"].iloc[-1] > r.rounds["global_acc_mean"].iloc[-1]


def test_fedrep_trains_the_head_then_the_body(tmp_path):
    r = run(tmp_path, "fedrep", strategy="fedrep", head_epochs=2)
    assert r.rounds["personal_acc_mean"].notna().all()
    assert r.meta["strategy_params"]["head_epochs"] == 2


def test_ditto_with_lambda_zero_is_local_training_and_a_larger_lambda_stays_near_the_global(tmp_path):
    local = run(tmp_path, "local", strategy="local")
    assert local.rounds["bytes_up"].eq(0).all()  # nothing leaves the devices
    zero = run(tmp_path, "d0", strategy="ditto", ditto_lambda=0.0)
    strong = run(tmp_path, "d5", strategy="ditto", ditto_lambda=5.0)
    mild = run(tmp_path, "d01", strategy="ditto", ditto_lambda=0.1)
    glob = flat_of(zero.path / "global.ckpt")
    # Ditto's global model is FedAvg's, whatever lambda
    assert (mild.path / "global.ckpt").read_bytes() == (zero.path / "global.ckpt").read_bytes()
    dist = {}
    for name, r in (("zero", zero), ("mild", mild), ("strong", strong)):
        dist[name] = []
        for d in range(RUN["devices"]):
            v = r.device_state(d)["ditto.personal"]
            if name == "zero":
                np.testing.assert_array_equal(v, local.device_state(d)["personal.layers"])
            dist[name].append(float(np.linalg.norm(v - glob)))
    assert np.mean(dist["strong"]) < np.mean(dist["mild"]) < np.mean(dist["zero"])
    np.testing.assert_allclose(
        zero.devices.query("round == 3")["personal_accuracy"], local.devices.query("round == 3")["personal_accuracy"]
    )


@pytest.mark.parametrize("strategy", ["fedper", "ditto"])
def test_personal_states_are_the_same_on_any_host_count_and_after_a_resume(tmp_path, strategy):
    kw = dict(strategy=strategy, rounds=4, devices=8, per_round=4, personal_eval_epochs=1, commit_every="1")
    one = run(tmp_path, "one", 1, **kw)
    two = run(tmp_path, "two", 2, **kw)
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(3), **{**RUN, **kw})
    resumed = fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))
    drop = ["host", "train_s"]
    for other in (two, resumed):
        np.testing.assert_array_equal(other.rounds["personal_acc_mean"], one.rounds["personal_acc_mean"])
        a = one.devices.drop(columns=[c for c in drop if c in one.devices]).reset_index(drop=True)
        b = other.devices.drop(columns=[c for c in drop if c in other.devices]).reset_index(drop=True)
        assert a.equals(b)
        assert (other.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()
        assert set(other.device_state_index()) == set(one.device_state_index())
        for d, state in one.device_states():
            theirs = other.device_state(d)
            assert set(theirs) == set(state)
            for k in state:
                np.testing.assert_array_equal(theirs[k], state[k])


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (dict(personal_layers="nothing/*"), "matches no weight of this model"),
        (dict(personal_layers="*/*/*"), "matches every weight"),
        (dict(personal_layers="head", secagg="secagg"), "--personal-layers with --secagg"),
        (dict(personal_eval_epochs=1, device_test_fraction=0.0), "give --device-test-fraction"),
        (dict(init_from="/nonexistent/run"), "--init-from no such file or folder"),
    ],
)
def test_bad_personalisation_settings_are_refused_in_one_line(tmp_path, settings, said):
    with pytest.raises(ConfigError, match=said) as e:
        run(tmp_path, "bad", **settings)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bad" / "rounds.parquet").exists()


def test_partial_sharing_composes_with_order_statistics(tmp_path):
    """The personal weights of every upload hold the global model's values, so a median, a trimmed mean
    or Krum's distances see only the shared part: they compose."""
    for strategy in ("fedmedian", "krum"):
        r = run(tmp_path, strategy, strategy=strategy, personal_layers="head")
        assert r.rounds["personal_acc_mean"].notna().all()


def test_init_from_a_run_folder_a_checkpoint_or_keras_weights(tmp_path):
    first = run(tmp_path, "central", rounds=2)
    again = run(tmp_path, "again", rounds=1, init_from=str(first.path), eval_initial=True, personal_eval_epochs=1)
    assert again.rounds["test_accuracy"].iloc[0] == first.rounds["test_accuracy"].iloc[-1]
    # the guide's scenario: how much each device gains by fine-tuning the model it starts from
    start = again.rounds.set_index("round").loc[0]
    assert start["personal_acc_mean"] > start["global_acc_mean"]
    assert len(again.devices.query("round == 0 and status == 'evaluated'")) == RUN["devices"]
    from_file = run(tmp_path, "file", rounds=1, init_from=str(first.path / "global.ckpt"))
    assert (from_file.path / "global.ckpt").read_bytes() == (again.path / "global.ckpt").read_bytes()
    # a Keras weights file of the same model, named as the artifact names its weights
    from fedsim.core.task import Task
    from fedsim.model.builders import build_mlp

    task = Task.from_dict(first.meta["task"])
    model = build_mlp(task)
    weights = named(first)
    model.set_weights([weights[w.path] for w in model.weights])
    model.save_weights(str(tmp_path / "central.weights.h5"))
    keras = run(tmp_path, "keras", rounds=1, init_from=str(tmp_path / "central.weights.h5"), eval_initial=True)
    assert keras.rounds["test_accuracy"].iloc[0] == first.rounds["test_accuracy"].iloc[-1]
    with pytest.raises(ConfigError, match="not a checkpoint of this model"):
        run(tmp_path, "cnn", rounds=1, model="logreg", init_from=str(first.path))


def test_inspect_lists_the_weights_a_pattern_names(tmp_path):
    r = run(tmp_path, "r", rounds=1)
    table = fedsim.inspect(r.path, repeats=1).weights()
    assert table["name"].tolist() == [n for n, _ in r.artifact["layout"]]
    assert table.loc[table["head"], "name"].tolist() == ["mlp/classifier/bias", "mlp/classifier/kernel"]
    assert int(table["parameters"].sum()) == int(r.artifact["parameters"])


@pytest.mark.real_data
@pytest.mark.ray
def test_fedper_personalises_fashion_mnist_where_fedavg_cannot(tmp_path):
    """20 devices of Fashion-MNIST with 2 labels each, every device every round, a quarter of each
    device's data its own test split: FedPer's personal models score >= 0.95 on their devices, where
    FedAvg's global model scores <= 0.85 on the same devices (on Ray's hosts: the default engine)."""
    real = dict(devices=20, rounds=8, partition="classes:2", device_test_fraction=0.25, seed=0, progress=False)
    fedavg = fedsim.run(out=str(tmp_path / "fedavg"), **real)
    fedper = fedsim.run(out=str(tmp_path / "fedper"), strategy="fedper", **real)
    assert fedavg.meta["dataset"]["name"] == "fashion_mnist"
    assert "personal_acc_mean" not in fedavg.rounds  # FedAvg keeps no personal model, and none was asked for
    fedavg_on_devices = fedavg.devices.query("round == 8")["test_accuracy"].mean()
    assert fedavg_on_devices <= 0.85
    assert fedper.rounds["personal_acc_mean"].iloc[-1] >= 0.95


def test_personal_states_read_from_the_disk_give_the_same_run_as_from_the_hosts_memory(tmp_path):
    """--state-cache-mb 0: every host reads its devices' heads from the state folder instead of the
    copy it kept of what it wrote: the same tables and states (memory flat, rounds slower)."""
    kw = dict(strategy="fedper", rounds=3, devices=8, per_round=8)
    cached = run(tmp_path, "cached", 2, **kw)
    engine = fedsim.LocalEngine(2)
    disk = fedsim.run(out=str(tmp_path / "disk"), engine=engine, state_cache_mb=0, **{**RUN, **kw})
    assert all(host.shelf.cache_bytes == 0 and not host.shelf._cache for host in engine.hosts)
    assert disk.meta["config"]["engine"]["state_cache_mb"] == 0
    drop = ["host", "train_s"]
    assert cached.devices.drop(columns=drop).equals(disk.devices.drop(columns=drop))
    for d in range(8):
        key = "personal.layers"
        np.testing.assert_array_equal(cached.device_state(d)[key], disk.device_state(d)[key])
