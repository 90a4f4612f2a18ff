"""How far float rounding alone moves a frozen-feature head's results, per method.

``train_head`` is trained three times on the CREMA-D-sized inputs of ``bench/bench_sweep.py``
(synthetic 7,442 × 768 features on the real EMO-SUPERB fold-1 splits of the given ratios, the IDI recipe:
50 epochs, batch 32, Adam 1e-4, dev-loss selection): twice on the same features, once with every
training feature moved by one ulp (``torch.nextafter``). Printed: the largest |Δ| of a test
probability between the repeats (determinism) and against the perturbed run (sensitivity), and the
selected epochs. The batched sweep path (``llmfair.ssl.batched_head``) differs from one-at-a-time
training by rounding only, so its differences are to be read against the second column.

Measured on this project's 2-core CPU (torch 2.13.0+cpu, one thread), 2026-12-06, max over the
five ratios 1, 5, 10, 20, 40 (``... adv,madv,disent,erm 50 1,5,10,20,40``; gdro and lff at ratio 1):

    method   repeat |Δp|   one-ulp |Δp|   selected epoch moved by one ulp
    erm          0           4.8e-07       0 of 5 ratios
    gdro         0           3.6e-07       0 of 1
    lff          0           4.7e-07       0 of 1
    adv          0           2.4e-02       0 of 5
    madv         0           4.0e-02       0 of 5
    disent       0           6.9e-02       2 of 5

Batched against one at a time on the same 5 runs (``bench/bench_sweep.py``): adv 2.4e-2, madv
8.1e-3, disent 7.1e-2 (2 of 5 epochs moved); the other methods ≤ 5e-6.

    .venv/bin/python docs/experiments/head_rounding_sensitivity.py [METHODS] [EPOCHS] [RATIOS]
    (default: erm,gdro,lff,adv,madv,disent, 50 epochs, ratio 1)
"""
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_sweep  # noqa: E402  (the benchmark's inputs and objective registration)

from llmfair.data.crema_d import read_crema_d  # noqa: E402
from llmfair.data.imbalance import build_imbalanced_splits  # noqa: E402
from llmfair.data.labels import CREMA_D  # noqa: E402
from llmfair.objectives import GroupSpec, build_objective  # noqa: E402
from llmfair.ssl.train_head import HeadTrainingOptions, train_head  # noqa: E402

torch.set_num_threads(1)
logging.basicConfig(level=logging.ERROR)
bench_sweep.register_all_objectives()
methods = (sys.argv[1] if len(sys.argv) > 1 else "erm,gdro,lff,adv,madv,disent").split(",")
epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 50
ratios = [float(r) for r in (sys.argv[3] if len(sys.argv) > 3 else "1").split(",")]

work = Path(tempfile.mkdtemp(prefix="rounding_"))
features_path, _ = bench_sweep.make_inputs(work)
from safetensors.torch import load_file  # noqa: E402

features = load_file(str(features_path))["features"]
position = {k: i for i, k in enumerate(json.loads((work / "features.ids.json").read_text()))}
fold = read_crema_d(bench_sweep.LABELS, 1, check_audio=False)
spec = GroupSpec(("language", "modality", "gender"), (("eng", "audio", "female"), ("eng", "audio", "male")))


def inputs(ratio: float):
    examples = build_imbalanced_splits(fold, CREMA_D, ratio, 0).examples
    split = {s: [e for e in examples if e.split == s] for s in ("train", "dev", "test")}
    rows = {s: features[[position[e.id] for e in es]] for s, es in split.items()}
    labels = {s: np.array([e.emotion_dist for e in es], dtype=np.float32) for s, es in split.items()}
    genders = np.array([int(e.gender == "male") for e in split["train"]])
    return rows, labels, genders


def train(method: str, train_features, rows, labels, genders):
    with torch.random.fork_rng(devices=[]):  # constructor-built modules draw from the global RNG
        torch.manual_seed(0)
        objective = build_objective(method, spec)
    result = train_head(train_features, labels["train"], genders, objective, dev_features=rows["dev"],
                        dev_labels=labels["dev"], options=HeadTrainingOptions(epochs=epochs))
    return result.predict_proba(rows["test"]), result.best_epoch


print(f"ratios {ratios}, {epochs} epochs; max over the ratios")
print(f"{'method':<8}{'repeat |Δp|':>14}{'one-ulp |Δp|':>15}   selected epochs (same, repeat, one-ulp) per ratio")
data = {r: inputs(r) for r in ratios}
for method in methods:
    repeat = ulp = 0.0
    epochs_seen = []
    for ratio in ratios:
        rows, labels, genders = data[ratio]
        perturbed = torch.nextafter(rows["train"], torch.full_like(rows["train"], float("inf")))
        outputs = [train(method, x, rows, labels, genders) for x in (rows["train"], rows["train"], perturbed)]
        repeat = max(repeat, float(np.abs(outputs[0][0] - outputs[1][0]).max()))
        ulp = max(ulp, float(np.abs(outputs[0][0] - outputs[2][0]).max()))
        epochs_seen.append("/".join(str(o[1]) for o in outputs))
    print(f"{method:<8}{repeat:>14.1e}{ulp:>15.1e}   {' '.join(epochs_seen)}", flush=True)
