"""What a device's round costs its battery, in joules, from its simulated seconds and bytes.

  sim_energy_j = compute_w * compute_s                               (the processor)
               + (ALPHA_DOWN * down_mbps + BETA) * down_s            (receiving the model)
               + (ALPHA_UP * up_mbps + BETA) * up_s                  (sending the update)
               + BETA * wait_s                                       (a protocol's round trips)
               + TAIL_W * TAIL_S                                     (the radio's tail after the last byte)

The radio terms are the LTE power model of Huang et al., "A Close Examination of Performance and Power
Characteristics of 4G LTE Networks", MobiSys 2012, Table 3 / section 4: power while transferring is
linear in throughput, P = alpha_u * t_u + alpha_d * t_d + beta (mW, throughputs in Mbit/s), with
alpha_u = 438.39, alpha_d = 51.97, beta = 1288.04; after the last transfer the radio stays in its
high-power tail for 11.576 s at 1060 mW before it sleeps. fedsim charges one tail a round, after the
upload (the download's tail overlaps training; where training is longer than the tail this is a lower
bound by one more tail). Wi-Fi and 5G have other constants: pass your own
through a fleet file's columns if they matter.

compute_w is each device's power while it trains: a fleet file's compute_w column, or COMPUTE_W. The
default of 2 W is fedsim's assumption (the order of a phone's big CPU cores under sustained load), not
a measurement; measure your phone and set the column for figures you publish.
"""

from __future__ import annotations

import numpy as np

ALPHA_UP_MW_PER_MBPS = 438.39  # Huang et al. 2012
ALPHA_DOWN_MW_PER_MBPS = 51.97  # Huang et al. 2012
BETA_MW = 1288.04  # Huang et al. 2012: the base power of a transfer
TAIL_MW = 1060.0  # Huang et al. 2012: the RRC_CONNECTED tail's power
TAIL_S = 11.576  # Huang et al. 2012: the tail timer
COMPUTE_W = 2.0  # assumed (see above)


def energy_j(
    compute_s: np.ndarray,
    compute_w: np.ndarray,
    down_s: np.ndarray,
    up_s: np.ndarray,
    down_kbps: np.ndarray,
    up_kbps: np.ndarray,
    wait_s: float = 0.0,
) -> np.ndarray:
    """Joules of each device's round (the formula above; arrays broadcast)."""
    down_w = (ALPHA_DOWN_MW_PER_MBPS * down_kbps / 1000.0 + BETA_MW) / 1000.0
    up_w = (ALPHA_UP_MW_PER_MBPS * up_kbps / 1000.0 + BETA_MW) / 1000.0
    radio = down_w * down_s + up_w * up_s + BETA_MW / 1000.0 * wait_s + TAIL_MW / 1000.0 * TAIL_S
    return np.asarray(compute_w * compute_s + radio, np.float64)
