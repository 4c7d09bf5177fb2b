"""--compress bf16: the update rounded to bfloat16 on the device, two bytes a parameter on the wire."""

import numpy as np
import pytest
from fakes import StopAt

import fedsim
from fedsim.checkpoint import flatten, read_checkpoint, spec_of
from fedsim.experiment.config import Config, ConfigError
from fedsim.pipeline import reference
from fedsim.pipeline.codecs import from_bfloat16, to_bfloat16


def test_bfloat16_rounds_to_nearest_even_and_keeps_the_exponent():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38, 1e-30, 0.0], np.float32)
    y = from_bfloat16(to_bfloat16(x))
    # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even mantissa (1); 1 + 3 * 2^-8 to 1 + 2^-6
    np.testing.assert_array_equal(y[:3], [1.0, 1.0, 1.0 + 2**-6])
    assert y[3] == -2.5 and np.isfinite(y[4]) and y[6] == 0.0
    rng = np.random.default_rng(0)
    z = rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10000)
    rel = np.abs(from_bfloat16(to_bfloat16(z)) - z) / np.abs(z)
    assert rel.max() <= 2**-8  # half a unit in the last of bfloat16's 8 significant bits
    assert to_bfloat16(z).nbytes == 2 * z.size


def test_compress_is_a_checked_setting():
    assert Config(compress="bf16").compress == "bf16"
    with pytest.raises(ConfigError, match="--compress must be one of none, bf16, fp16, q8"):
        Config(compress="gzip")


@pytest.fixture(scope="module")
def one_device_runs(tmp_path_factory):
    """One device, one round, uncompressed and bf16: the new global model is that device's upload."""
    root = tmp_path_factory.mktemp("compress")
    settings = dict(dataset="toy_images", toy_samples=10, devices=1, rounds=1, seed=2, fleet="uniform", progress=False)
    runs = {}
    for method in ("none", "bf16"):
        runs[method] = fedsim.run(out=str(root / method), engine=fedsim.LocalEngine(), compress=method, **settings)
    return runs


def test_bf16_uploads_the_update_rounded_and_half_the_bytes(one_device_runs):
    from fedsim.device import Runner

    plain, half = one_device_runs["none"], one_device_runs["bf16"]
    runner = Runner((plain.path / "model.tflite").read_bytes())
    initial = read_checkpoint(runner.initial_checkpoint(plain.path))
    spec = spec_of(initial)
    w0 = flatten(initial, spec).astype(np.float64)
    trained = flatten(read_checkpoint((plain.path / "global.ckpt").read_bytes()), spec)
    by_hand = (w0 + from_bfloat16(to_bfloat16((trained - w0).astype(np.float32)))).astype(np.float32)
    got = flatten(read_checkpoint((half.path / "global.ckpt").read_bytes()), spec)
    np.testing.assert_array_equal(got, by_hand)
    params = int(half.artifact["parameters"])
    assert half.devices["checkpoint_bytes"].tolist() == [2 * params]
    assert half.rounds["bytes_up"].tolist() == [2 * params]
    assert plain.devices["checkpoint_bytes"].iloc[0] > 2 * params  # the saved TF v1 checkpoint: 4 bytes each, more
    assert half.meta["pipeline"] == ["verify", "compress"]


def test_each_host_stage_records_its_seconds_in_the_rounds_table(one_device_runs):
    plain, half = one_device_runs["none"], one_device_runs["bf16"]
    assert not [c for c in plain.rounds if c.endswith("_host_s")]  # (every upload's checks are the plain round)
    assert (half.rounds["compress_host_s"] > 0).all()
    assert (half.rounds["compress_host_s"] < half.rounds["hosts_s"]).all()  # a part of the hosts' time


def test_bf16_halves_the_upload_on_the_simulated_clock(one_device_runs):
    """The uniform fleet uploads at 5,000 kbit/s: the upload's seconds follow its bytes."""
    plain, half = one_device_runs["none"], one_device_runs["bf16"]
    down = 8 * plain.rounds["bytes_down"].iloc[0] / (1000 * 20_000)

    def upload_s(run):
        return run.devices["sim_comm_s"].iloc[0] - down

    assert upload_s(half) == pytest.approx(8 * half.devices["checkpoint_bytes"].iloc[0] / (1000 * 5_000))
    assert upload_s(plain) == pytest.approx(8 * plain.devices["checkpoint_bytes"].iloc[0] / (1000 * 5_000))


# ---- the codecs -------------------------------------------------------------------------------
from fedsim.pipeline import codecs  # noqa: E402


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("rotate", [False, True])
def test_stochastic_quantisation_is_unbiased(bits, rotate):
    """The mean of 400 independent encodings of one update is the update: each coordinate's error
    is a mean of 400 independent draws whose spread is at most a level, so |error| stays under
    5 standard errors of (level / 2) / sqrt(400) (a fixed seed; 5 sigma over 300 coordinates)."""
    rng = np.random.default_rng(7)
    update = (rng.standard_normal(300) * np.linspace(0.01, 1, 300)).astype(np.float32)
    signs = codecs.rotation(len(update), 5, 3)[1] if rotate else None
    trials = 400
    total = np.zeros(len(update))
    for t in range(trials):
        noise = codecs.dither(len(signs) if rotate else len(update), 5, t // 20, t % 20)  # 20 devices a round
        payload = codecs.quantise(update, bits, noise, signs)
        assert len(payload) == codecs.quantised_bytes(len(update), bits, rotate)
        total += codecs.dequantise(payload, bits, len(update), signs)
    noise = rng.random(len(signs) if rotate else len(update))
    lo, hi = np.frombuffer(codecs.quantise(update, bits, noise, signs)[:8], np.float32)
    level = (float(hi) - float(lo)) / ((1 << bits) - 1)
    bound = 5 * (level / 2) / np.sqrt(trials)
    error = total / trials - update
    assert np.abs(error).max() < bound
    # and a single encoding really is coarse (the test above is not vacuous)
    one = codecs.dequantise(codecs.quantise(update, bits, noise, signs), bits, len(update), signs)
    assert np.abs(one - update).max() > bound


def test_packing_round_trips_every_width():
    rng = np.random.default_rng(1)
    for bits in (1, 2, 4, 8):
        levels = rng.integers(0, 1 << bits, 1001).astype(np.uint8)
        packed = codecs.pack(levels, bits)
        assert len(packed) == -(-1001 * bits // 8)
        np.testing.assert_array_equal(codecs.unpack(packed, bits, 1001), levels)


def test_packing_matches_the_definition_bit_by_bit():
    """Value i of a B-bit packing sits in byte i // (8 / B) at bit B * (i % (8 / B)), whatever the
    word tricks inside pack() and unpack()."""
    rng = np.random.default_rng(11)
    for bits in (2, 4):
        levels = rng.integers(0, 1 << bits, 37).astype(np.uint8)
        per = 8 // bits
        expected = np.zeros(-(-37 // per), np.uint8)
        for i, v in enumerate(levels):
            expected[i // per] |= int(v) << (bits * (i % per))
        assert codecs.pack(levels, bits) == expected.tobytes()


def test_the_compiled_codecs_give_the_reference_expressions_bytes_and_values_bit_for_bit():
    rng = np.random.default_rng(13)
    for trial in range(12):
        n = int(rng.integers(1, 30_000))
        update = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3)).astype(np.float32)
        update[rng.integers(0, n, n // 4)] = 0.0 if trial % 3 else -0.0
        base = (rng.standard_normal(n) * 0.1).astype(np.float32)
        half = reference.bf16_bits(update)
        np.testing.assert_array_equal(to_bfloat16(update), half)
        exact = reference.bf16_values(half)
        assert from_bfloat16(half).tobytes() == exact.tobytes()
        assert codecs.half_decode("bf16", half.tobytes(), onto=base).tobytes() == (base + exact).tobytes()
        for bits in (8, 4, 2, 1):
            noise = codecs.dither(n, 5, trial, bits)
            payload = codecs.quantise(update, bits, noise)
            assert payload == reference.quantise(update, bits, noise)
            # the difference taken inside the loops: the bytes of quantising the stored difference
            shifted = update + base
            assert codecs.quantise(shifted, bits, noise, base=base) == reference.quantise(shifted - base, bits, noise)
            decoded = reference.dequantise(payload, bits, n)
            assert codecs.dequantise(payload, bits, n).tobytes() == decoded.tobytes()
            assert codecs.dequantise(payload, bits, n, onto=base).tobytes() == (base + decoded).tobytes()


def test_the_compiled_codecs_refuse_mismatched_sizes_instead_of_reading_past_an_array():
    """The loops do not check bounds (numba), so the codecs check sizes first."""
    x = np.ones(10, np.float32)
    for call in (
        lambda: codecs.quantise(x, 8, np.zeros(10, np.float32), base=np.ones(9, np.float32)),
        lambda: codecs.quantise(x, 8, np.zeros(9, np.float32)),
        lambda: codecs.quantise(np.zeros(0, np.float32), 8, np.zeros(10, np.float32)),
        lambda: codecs.dequantise(codecs.quantise(np.arange(10.0), 8, np.zeros(10)), 8, 10, onto=np.ones(11)),
        lambda: codecs.dequantise(codecs.quantise(np.arange(10.0), 8, np.zeros(10)), 8, 12),
        lambda: codecs.from_bfloat16(np.zeros(5, np.uint16), onto=np.ones(6, np.float32)),
    ):
        with pytest.raises(ValueError):
            call()


def test_the_compiled_dither_offset_is_numpys_seeded_draw():
    """seeded_kernels.seeded_draw (SeedSequence, PCG64 and the bounded draw, compiled) against
    default_rng(entropy).integers(2^k): seeds of one and several 32-bit words, zeros, every k used."""
    from fedsim.core import seeded, seeded_kernels

    rng = np.random.default_rng(21)
    for trial in range(3000):
        k = int(rng.integers(16, 33))
        ints = [int(rng.integers(0, 2 ** int(rng.integers(1, 64)))), int(rng.integers(0, 10**6)), trial, 0xC0]
        if trial % 50 == 0:
            ints = [0, 0, 0, 0xC0]
        got = int(seeded_kernels.seeded_draw(seeded.words(*ints), 32 - k))
        assert got == int(np.random.default_rng(ints).integers(1 << k)), (ints, k)
    for length, seed in ((70_000, 2**40 + 3), (101_770, 0), (5, 7)):
        np.testing.assert_array_equal(codecs.dither(length, seed, 1, 9), reference.dither(length, seed, 1, 9))


def test_the_largest_magnitudes_are_found_exactly_even_when_the_sample_misjudges():
    """largest() against a full sort (ties to the lowest index): random values, many ties, a few
    huge values the strided sample misses, and a k the candidates cannot cover."""
    rng = np.random.default_rng(12)
    n = 40_000
    cases = {
        "random": np.abs(rng.standard_normal(n)),
        "ties": rng.integers(0, 4, n).astype(np.float64),
        "zeros": np.where(rng.random(n) < 0.001, 1.0, 0.0),
        "unsampled": np.where(np.arange(n) % 4 == 1, 100.0 + rng.random(n), rng.random(n)),
    }
    for name, magnitude in cases.items():
        m32 = magnitude.astype(np.float32)
        for k in (1, 7, 400, 10_001, n):
            want = np.sort(np.lexsort((np.arange(n), -m32))[:k])
            np.testing.assert_array_equal(codecs.largest(m32, k), want, err_msg=f"{name} {k}")


def test_the_hadamard_rotation_is_its_own_inverse_and_keeps_the_norm():
    x = np.random.default_rng(2).standard_normal(64)
    y = codecs.hadamard(x)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-6)
    np.testing.assert_allclose(codecs.hadamard(y), x, atol=1e-5)
    h = np.array([[1, 1], [1, -1]]) / np.sqrt(2)  # the 2x2 case by hand
    np.testing.assert_allclose(codecs.hadamard(np.array([3.0, 1.0])), h @ [3.0, 1.0])


def test_topk_with_error_feedback_loses_no_mass():
    """Over rounds, what was sent plus what the device still holds is everything it had to send."""
    rng = np.random.default_rng(3)
    residual = np.zeros(500, np.float32)
    sent_total = np.zeros(500, np.float64)
    owed_total = np.zeros(500, np.float64)
    for _ in range(20):
        update = rng.standard_normal(500).astype(np.float32)
        owed_total += update
        payload, residual = codecs.topk_encode(update + residual, 10)
        assert len(payload) == 4 + 8 * 10
        decoded = codecs.topk_decode(payload, 500)
        assert np.count_nonzero(decoded) == 10
        sent_total += decoded
    np.testing.assert_allclose(sent_total + residual, owed_total, atol=1e-4)


def test_compress_settings_refuse_what_does_not_apply():
    for bad in ("topk:0", "topk:1.5", "topk:x", "q3"):
        with pytest.raises(ConfigError, match="--compress must be one of"):
            Config(compress=bad)
    with pytest.raises(ConfigError, match="--rotate applies to --compress q8, q4, q2 or q1"):
        Config(compress="bf16", rotate=True)
    with pytest.raises(ConfigError, match="--compress-down"):
        Config(compress_down="q8")


# ---- in runs ----------------------------------------------------------------------------------
RUN = dict(dataset="toy_images", toy_samples=20, devices=8, per_round=4, rounds=4, seed=5, progress=False)


@pytest.mark.parametrize("method", ["q4", "q1", "topk:0.01"])
def test_the_bytes_recorded_are_the_encoded_payload(tmp_path, method):
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), compress=method, fleet="uniform", **RUN)
    params = int(run.artifact["parameters"])
    ok = run.devices[run.devices["status"] == "ok"]
    update = np.random.default_rng(0).standard_normal(params).astype(np.float32)
    if method.startswith("q"):
        bits = int(method[1:])
        expected = len(codecs.quantise(update, bits, codecs.dither(params, 0, 1, 0)))
    else:
        expected = len(codecs.topk_encode(update, round(0.01 * params))[0])
    assert set(ok["checkpoint_bytes"]) == {expected}
    assert run.rounds["bytes_up"].tolist() == [expected * 4] * 4
    assert run.rounds["test_accuracy"].notna().all()


def test_rotated_q2_and_entropy_sizes_are_recorded(tmp_path):
    run = fedsim.run(
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        compress="q2",
        rotate=True,
        compress_entropy=True,
        **RUN,
    )
    params = int(run.artifact["parameters"])
    ok = run.devices[run.devices["status"] == "ok"]
    assert set(ok["checkpoint_bytes"]) == {codecs.quantised_bytes(params, 2, True)}
    assert (ok["entropy_bytes"] <= ok["checkpoint_bytes"]).all() and (ok["entropy_bytes"] > 8).all()


def test_downlink_compression_sends_two_bytes_a_parameter(tmp_path):
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), compress_down="bf16", **RUN)
    params = int(run.artifact["parameters"])
    assert run.rounds["bytes_down"].tolist() == [2 * params * 4] * 4
    assert run.meta["pipeline"] == ["verify", "compress"]


def test_error_feedback_runs_the_same_on_any_host_count_and_after_a_resume(tmp_path):
    """Residuals are kept per device across rounds (devices are picked again), saved with the
    server state, and restored on resume: the tables and the final model are the same."""
    settings = {**RUN, "rounds": 6, "compress": "topk:0.05", "commit_every": "1"}  # killed after round 3
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up"]
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(1), **settings)
    two = fedsim.run(out=str(tmp_path / "two"), engine=fedsim.LocalEngine(2), **settings)
    assert two.rounds[columns].equals(one.rounds[columns])
    assert (two.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(4), **settings)
    # the residuals are device state: the devices that ran a round kept theirs in that round's
    # segment (written by the host, named by the committed index), the others where earlier rounds put them
    resume = tmp_path / "cut" / "resume"
    with np.load(resume / "round-3.server_state.npz") as saved:
        assert not [k for k in saved.files if k.startswith("pipeline.compress")]  # none on the coordinator
        ids, slots, names = saved["device_state.ids"], saved["device_state.slots"], saved["device_state.segments"]
    ran = fedsim.load_run(tmp_path / "cut").devices.query("round == 3 and status == 'ok'")["device_id"]
    in_round_3 = {int(d) for d, s in zip(ids, slots) if str(names[s]).startswith("00000003-")}
    assert in_round_3 == set(ran.tolist()) and len(ids) > len(in_round_3)
    resumed = fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))
    assert resumed.rounds[columns].equals(one.rounds[columns])
    assert (resumed.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()
    # the residuals kept are those of the devices that ran, mostly non-zero (what was not sent; some
    # weights never move), the same however many hosts ran them and after the resume
    kept = one.device_state_index()
    assert set(kept) == set(one.devices.loc[one.devices["status"] == "ok", "device_id"].tolist())
    for d in kept:
        rest = one.device_state(d)["compress.residual"]
        assert np.count_nonzero(rest) > 0.5 * rest.size
        np.testing.assert_array_equal(two.device_state(d)["compress.residual"], rest)
        np.testing.assert_array_equal(resumed.device_state(d)["compress.residual"], rest)


def test_compiled_top_k_with_feedback_gives_the_reference_bytes_residual_and_update():
    """codecs.topk_with_feedback (the compiled passes a run uses) against topk_encode of the same
    update then topk_decode onto the base (plain numpy): identical, ties and tiny models included."""
    rng = np.random.default_rng(12)
    for trial in range(200):
        n = [1, 2, 5, 16, 8193, 101_770][trial] if trial < 6 else int(rng.integers(1, 50_000))
        base = rng.standard_normal(n).astype(np.float32)
        flat = (base + rng.standard_normal(n).astype(np.float32) * 0.01).astype(np.float32)
        if trial % 3 == 0:
            flat[: n // 2] = base[: n // 2]  # many ties (at zero) at the boundary
        carried = None if trial % 2 else (rng.standard_normal(n) * 0.001).astype(np.float32)
        k = max(1, round(0.01 * n)) if trial % 4 else int(rng.integers(1, n + 1))
        update = flat - base
        if carried is not None:
            update += carried
        payload, rest = codecs.topk_encode(update, k)
        decoded = codecs.topk_decode(payload, n)
        decoded += base
        got_payload, got_rest, got_decoded = codecs.topk_with_feedback(flat, base, carried, k)
        assert got_payload == payload, trial
        np.testing.assert_array_equal(got_rest, rest)
        np.testing.assert_array_equal(got_decoded, decoded)
        if carried is not None:  # the residual updated where it lies (the device's own state)
            mine = carried.copy()
            again, kept, _ = codecs.topk_with_feedback(flat, base, mine, k, mine)
            assert again == payload and kept is mine, trial
            np.testing.assert_array_equal(mine, rest)
    with pytest.raises(ValueError, match="top-k of 3 values onto 2"):
        codecs.topk_with_feedback(np.zeros(3, np.float32), np.zeros(2, np.float32), None, 1)
