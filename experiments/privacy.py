"""What privacy costs: DP-FedAvg on Fashion-MNIST with 6,000 simulated phones, with and without
secure aggregation.

    python experiments/privacy.py

6,000 devices of 10 images each; each round every device joins with probability 1/60 (Poisson
sampling, about 100 a round), and the noise added is that of a cohort of 1,000 (--dp-noise-cohort,
pfl-research's trick: the accountant then assumes a sampling rate of 1/6). Updates are clipped
adaptively toward their median norm (Andrew et al. 2021, starting at C = 0.1). Epsilon in {1, 2, 4, 8}
at delta = 1 / 6000^1.1 over 200 rounds, plus no DP; each once without and once with SecAgg+ (22-bit
quantisation, 32-bit modulus). The phones have the `phones` fleet's speeds and bandwidths but are
always available and never drop out, so the sampling is what the accountant assumes. Writes
results/workloads/privacy.md / .csv and privacy.png.
"""

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

import fedsim
from fedsim.clock import FLEETS
from fedsim.report.analysis import hours_to
from fedsim.report.tables import publish

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# ---- settings ---------------------------------------------------------------------------------
devices = 6000  # 10 Fashion-MNIST images each
cohort = 100  # expected devices a round (Poisson sampling with probability 1/60)
noise_cohort = 1000  # the noise is that of a cohort of 1,000; the accountant assumes q = 1000 / 6000
rounds = 200
epsilons = [1.0, 2.0, 4.0, 8.0, None]  # None: no DP
delta = devices**-1.1
target = 0.75  # rounds and simulated hours to this test accuracy
out = Path("results/privacy_runs")
published = Path("results/workloads")
base = dict(
    devices=devices,
    per_round=cohort,
    sampling="poisson",
    rounds=rounds,
    local_epochs=5,
    batch_size=10,
    lr=0.1,
    eval_every=10,
    seed=0,
    name="privacy",
    progress=False,
)

# ---- the phones: built-in speeds and bandwidths, always there ---------------------------------
out.mkdir(parents=True, exist_ok=True)
fleet = FLEETS["phones"].draw(devices, seed=0).assign(availability=1.0, dropout=0.0)
fleet.to_csv(out / "fleet.csv", index=False)

# ---- run --------------------------------------------------------------------------------------
rows = []
for secagg in ("none", "secaggplus"):
    for epsilon in epsilons:
        name = f"eps-{epsilon or 'inf'}_{secagg}"
        dp = (
            {}
            if epsilon is None
            else dict(
                dp_epsilon=epsilon, dp_delta=delta, dp_clip=0.1, dp_clip_quantile=0.5, dp_noise_cohort=noise_cohort
            )
        )
        folder = out / name
        run = (
            fedsim.load_run(folder)
            if (folder / "global.ckpt").is_file()
            else fedsim.run(out=str(folder), fleet=str(out / "fleet.csv"), secagg=secagg, **dp, **base)
        )
        r = run.rounds
        scored = r.dropna(subset=["test_accuracy"])
        hit = scored[scored["test_accuracy"] >= target]
        reporting = run.devices[run.devices["status"] == "ok"]
        rows.append(
            {
                "epsilon": epsilon if epsilon is not None else np.inf,
                "secagg": secagg,
                "final_accuracy": round(float(scored["test_accuracy"].iloc[-1]), 4),
                f"rounds_to_{target}": int(hit["round"].iloc[0]) if len(hit) else np.nan,
                f"sim_h_to_{target}": round(hours_to(scored, target), 3),
                "final_epsilon": round(float(r["dp_epsilon"].iloc[-1]), 3) if "dp_epsilon" in r else np.inf,
                "noise_multiplier": round(run.meta.get("stages", {}).get("dp", {}).get("noise_multiplier", 0.0), 4),
                "final_clip": round(float(r["dp_clip"].iloc[-1]), 4) if "dp_clip" in r else np.nan,
                "kb_up_per_device": round(float(r["bytes_up"].sum()) / max(len(reporting), 1) / 1024, 1),
                "kb_down_per_device": round(
                    float(r["bytes_down"].sum()) / max(int(r["devices_selected"].sum()), 1) / 1024, 1
                ),
                "sim_s_per_round": round(float(r["sim_round_s"].median()), 2),
                "wall_s_per_round": round(float(r["wall_s"].median()), 3),
            }
        )
        print(rows[-1], flush=True)

# ---- the table and the plot -------------------------------------------------------------------
table = pd.DataFrame(rows)
fig, ax = plt.subplots(figsize=(7, 4.5))
for secagg, marker, style in (("none", "o", "-"), ("secaggplus", "s", "--")):
    part = table[(table["secagg"] == secagg) & np.isfinite(table["epsilon"])]
    ax.plot(
        part["epsilon"],
        part["final_accuracy"],
        marker=marker,
        linestyle=style,
        label=f"DP-FedAvg, {'SecAgg+' if secagg != 'none' else 'no SecAgg'}",
    )
    baseline = table[(table["secagg"] == secagg) & ~np.isfinite(table["epsilon"])]["final_accuracy"]
    if len(baseline):
        ax.axhline(
            float(baseline.iloc[0]),
            color="grey",
            linestyle=style,
            linewidth=1,
            label=f"no DP, {'SecAgg+' if secagg != 'none' else 'no SecAgg'}",
        )
ax.set_xscale("log", base=2)
ax.set_xticks(epsilons[:-1], [f"{e:g}" for e in epsilons[:-1]])
ax.set(
    xlabel=f"epsilon (delta = 1/{devices}^1.1, {rounds} rounds)",
    ylabel=f"test accuracy after {rounds} rounds",
    title=f"Privacy against accuracy: {devices:,} phones, ~{cohort} a round, noise of {noise_cohort:,}",
)
ax.grid(alpha=0.3)
ax.legend(fontsize="small")
fig.tight_layout()
publish(table, published, "privacy", figure=fig)
