"""The EMO-SUPERB head and its base losses: class-balanced weights against a hand-worked case,
soft cross-entropy against torch, the head against EMO-SUPERB's per-frame computation, training
to high accuracy with layer weights that learn, and a FairTrainer run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmfair.errors import ConfigError, DataError
from llmfair.ssl import EmoSuperbHead, HeadOptions, class_balanced_weights, soft_cross_entropy


pytestmark = pytest.mark.usefixtures("one_thread")


# ten training rows, K = 4; strict > 1/4 binarisation gives positives per row:
# rows 0-4 {0}; rows 5-6 {1, 2}; row 7 {1} (its 0.25 shares are not > 1/4); rows 8-9 {3}
TRAIN = np.array(
    [[0.7, 0.1, 0.1, 0.1]] * 5
    + [[0.1, 0.5, 0.3, 0.1]] * 2
    + [[0.25, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.7]]
)


def test_class_balanced_weights_hand_worked() -> None:
    # n_c = (5, 3, 2, 2), N = 10, β = 0.9: w_c = 0.1 / (1 − 0.9^n_c)
    raw = np.array([0.1 / (1 - 0.59049), 0.1 / (1 - 0.729), 0.1 / (1 - 0.81), 0.1 / (1 - 0.81)])
    expected = 4 * raw / raw.sum()
    w = class_balanced_weights(TRAIN)
    assert w.dtype == torch.float32 and w.shape == (4,)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(expected, [0.586361, 0.886054, 1.263793, 1.263793], atol=1e-6)
    assert float(w.sum()) == pytest.approx(4.0)
    np.testing.assert_allclose(class_balanced_weights(torch.tensor(TRAIN)).numpy(), w.numpy())


def test_class_balanced_weights_errors() -> None:
    no_fear = TRAIN[:8]  # class 3 has no positive row
    with pytest.raises(DataError, match=r"\['fear'\] have no positive training label"):
        class_balanced_weights(no_fear, class_names=["angry", "sad", "happy", "fear"])
    with pytest.raises(DataError, match="shape"):
        class_balanced_weights(np.ones(4))


def test_soft_cross_entropy_equals_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=g)
    targets = torch.tensor(TRAIN, dtype=torch.float32)
    ours = soft_cross_entropy(logits, targets)
    torch.testing.assert_close(ours, F.cross_entropy(logits, targets, reduction="none"))
    torch.testing.assert_close(soft_cross_entropy(logits, targets, reduction="mean"), F.cross_entropy(logits, targets))
    torch.testing.assert_close(soft_cross_entropy(logits, targets, reduction="sum"),
                               F.cross_entropy(logits, targets, reduction="sum"))
    idx = torch.tensor([0, 3, 1, 2, 0, 0, 1, 3, 2, 1])
    torch.testing.assert_close(soft_cross_entropy(logits, idx), F.cross_entropy(logits, idx, reduction="none"))
    with pytest.raises(ConfigError, match="reduction"):
        soft_cross_entropy(logits, targets, reduction="avg")


def test_class_balanced_soft_cross_entropy_per_sample_weights() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    w = class_balanced_weights(TRAIN)
    ours = soft_cross_entropy(logits, torch.tensor(TRAIN), class_weights=w).numpy()
    # by hand in numpy: s_i = Σ_c w_c y_ic;  ℓ_i = −s_i Σ_c y_ic log softmax(z_i)_c
    z = logits.numpy()
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    s = TRAIN @ w.numpy().astype(np.float64)
    np.testing.assert_allclose(ours, -s * (TRAIN * log_p).sum(axis=1), rtol=1e-6)
    assert s[0] == pytest.approx(0.7 * 0.586361 + 0.1 * (0.886054 + 2 * 1.263793), rel=1e-5)


# ------------------------------------------------------------------------------------- head
def test_head_equals_emo_superb_per_frame_pipeline() -> None:
    """Weighted layer sum → projector per frame → mean over frames → linear, as EMO-SUPERB runs it,
    equals the head on the frame-mean of each layer."""
    torch.manual_seed(0)
    head = EmoSuperbHead(8, 5, num_layers=3, options=HeadOptions(loss="soft_ce"))
    with torch.no_grad():
        head.layer_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    frames = torch.randn(4, 3, 11, 8, dtype=torch.float64)  # (B, L+1, T, D)
    head = head.double()
    w = torch.softmax(head.layer_logits, 0)
    per_frame = torch.einsum("bltd,l->btd", frames, w) @ head.projector.weight.T + head.projector.bias
    reference = per_frame.mean(dim=1) @ head.output.weight.T + head.output.bias
    out = head(frames.mean(dim=2))
    torch.testing.assert_close(out["logits"], reference)
    torch.testing.assert_close(out["features"], per_frame.mean(dim=1))
    assert "per_sample_loss" not in out


def separable_data(n: int = 256, layers: int = 4, dim: int = 16, classes: int = 4, informative: int = 2, seed: int = 0):
    """Per-layer features where only ``informative`` carries the class (a class mean shift)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    feats = torch.randn(n, layers, dim, generator=g)
    centres = 3.0 * torch.randn(classes, dim, generator=g)
    feats[:, informative] += centres[labels]
    return feats, labels


def test_head_trains_and_layer_weights_learn() -> None:
    torch.manual_seed(0)
    feats, labels = separable_data()
    soft = 0.01 + 0.96 * F.one_hot(labels, 4).float()
    head = EmoSuperbHead(16, 4, num_layers=4, options=HeadOptions(loss="cb_soft_ce"),
                         class_weights=class_balanced_weights(soft))
    w0 = head.layer_weights.detach().clone()
    torch.testing.assert_close(w0, torch.full((4,), 0.25))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(300):
        idx = torch.randint(0, len(labels), (32,))
        out = head(feats[idx], soft[idx])
        opt.zero_grad()
        out["per_sample_loss"].mean().backward()
        if step == 0:
            assert head.layer_logits.grad is not None and head.layer_logits.grad.abs().sum() > 0
        opt.step()
    out = head(feats, soft)
    assert set(out) == {"per_sample_loss", "logits", "features", "inputs"}
    assert out["per_sample_loss"].shape == (256,) and out["logits"].shape == (256, 4)
    assert out["features"].shape == (256, 256)
    accuracy = (out["logits"].argmax(1) == labels).float().mean().item()
    assert accuracy > 0.95
    w = head.layer_weights.detach()
    assert float(w.sum()) == pytest.approx(1.0) and bool((w > 0).all())
    assert int(w.argmax()) == 2 and float(w[2]) > 0.25  # the informative layer gained weight


def test_head_losses_and_shapes() -> None:
    torch.manual_seed(0)
    feats = torch.randn(6, 10)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ce = EmoSuperbHead(10, 3, options=HeadOptions(loss="ce"))
    out = ce(feats, labels, group_ids=torch.zeros(6))  # extra batch keys are ignored
    torch.testing.assert_close(out["per_sample_loss"], F.cross_entropy(out["logits"], labels, reduction="none"))
    with pytest.raises(DataError, match=r"\[-1\].*soft loss"):
        ce(feats, torch.tensor([0, 1, -1, 0, 1, 2]))
    with pytest.raises(DataError, match="integer class labels"):
        ce(feats, F.one_hot(labels, 3).float())
    w = torch.tensor([0.5, 1.0, 1.5])
    cb = EmoSuperbHead(10, 3, options=HeadOptions(loss="cb_soft_ce"), class_weights=w)
    out = cb(feats, labels)
    torch.testing.assert_close(out["per_sample_loss"], w[labels] * F.cross_entropy(out["logits"], labels, reduction="none"))
    fixed = EmoSuperbHead(10, 3, num_layers=4, options=HeadOptions(loss="soft_ce", layer_weighting=False, layer=-1))
    per_layer = torch.randn(6, 4, 10)
    torch.testing.assert_close(fixed(per_layer)["logits"], fixed.output(fixed.projector(per_layer[:, 3])))
    assert fixed.layer_weights is None
    with pytest.raises(DataError, match=r"per-layer features \(B, 4, 10\)"):
        fixed(feats)
    with pytest.raises(ConfigError, match="needs class_weights"):
        EmoSuperbHead(10, 3)
    with pytest.raises(ConfigError, match="only used by loss 'cb_soft_ce'"):
        EmoSuperbHead(10, 3, options=HeadOptions(loss="ce"), class_weights=w)
    with pytest.raises(ConfigError, match="not one of"):
        HeadOptions(loss="focal")
    with pytest.raises(ConfigError, match="out of range"):
        EmoSuperbHead(10, 3, num_layers=4, options=HeadOptions(loss="ce", layer_weighting=False, layer=4))


def test_fair_trainer_trains_the_head(tmp_path) -> None:
    from llmfair.objectives import GroupSpec, build_objective
    from llmfair.training import FairTrainer, FairTrainingArguments

    feats, labels = separable_data(n=128, seed=3)
    soft = 0.01 + 0.96 * F.one_hot(labels, 4).float()
    spec, _ = GroupSpec.from_records([{"gender": "female"}, {"gender": "male"}], ("gender",))
    rows = [{"features": feats[i], "labels": soft[i], "group_ids": i % 2} for i in range(len(labels))]

    def collate(batch):
        return {"features": torch.stack([r["features"] for r in batch]),
                "labels": torch.stack([r["labels"] for r in batch]),
                "group_ids": torch.tensor([r["group_ids"] for r in batch])}

    torch.manual_seed(0)
    head = EmoSuperbHead(16, 4, num_layers=4, class_weights=class_balanced_weights(soft))
    args = FairTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=32, max_steps=60,
                                 learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no",
                                 disable_tqdm=True, logging_steps=20, seed=0)
    trainer = FairTrainer(model=head, args=args, train_dataset=rows, data_collator=collate,
                          objective=build_objective("erm", spec))
    trainer.train()
    head.eval()
    with torch.no_grad():
        accuracy = (head(feats)["logits"].argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9
    assert [h["fair/erm_loss"] for h in trainer.state.log_history if "fair/erm_loss" in h][-1] < 0.5
