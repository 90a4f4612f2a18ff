"""MinMaxGAP settings against ERM on the constructed frozen features of
tests/test_minmaxgap_effect.py (a gender gap built into one cell), 4 seeds each: the held-out
worst-cell W-F1 gap and accuracy per seed, and the paired mean difference against ERM.

    .venv/bin/python docs/experiments/minmaxgap_constructed.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.test_minmaxgap_effect import _train  # noqa: E402  (the test's data and head)

SETTINGS = [("erm", {})] + [("minmaxgap", {"side": side, "weight": weight})
                             for side in ("both", "worse") for weight in ("fixed", "ratio", "dual")]


def main() -> None:
    torch.set_num_threads(1)
    seeds = range(4)
    results = {}
    for name, options in SETTINGS:
        label = name + ("[" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + "]" if options else "")
        results[label] = np.array([_train(name, options, seed)[1:] for seed in seeds])  # (seeds, [gap, accuracy])
    erm = results["erm"]
    print("| setting | worst-cell gap per seed | accuracy per seed | Δ gap (mean, paired) | Δ accuracy (mean, paired) |")
    print("|---|---|---|---|---|")
    for label, values in results.items():
        gaps = ", ".join(f"{v:.3f}" for v in values[:, 0])
        accs = ", ".join(f"{v:.3f}" for v in values[:, 1])
        d = (values - erm).mean(0)
        print(f"| `{label}` | {gaps} | {accs} | {d[0]:+.3f} | {d[1]:+.3f} |")


if __name__ == "__main__":
    main()
