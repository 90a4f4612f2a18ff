"""A toy classifier and dataset to test the trainer's claims in seconds (no speech model)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from llmfair.objectives import GroupSpec, build_objective
from llmfair.training import FairTrainer, FairTrainingArguments

CELLS = [("deu", "audio"), ("eng", "audio"), ("jpn", "audio_text")]


class ToyClassifier(nn.Module):
    def __init__(self, dim: int = 6, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(dim, classes)
        self.poison = False  # make the loss NaN on demand

    def forward(self, features: torch.Tensor, labels: torch.Tensor, **_: object) -> dict:
        logits = self.linear(features)
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        if self.poison:
            loss = loss * torch.tensor(float("nan"))
        return {"per_sample_loss": loss, "logits": logits}


def toy_data(n: int = 48, seed: int = 0):
    rng = np.random.default_rng(seed)
    records = [{"language": l, "modality": m, "gender": g} for (l, m) in CELLS for g in ("female", "male")]
    spec, _ = GroupSpec.from_records(records, ("language", "modality", "gender"))
    group_ids = rng.integers(0, spec.num_groups, n)
    features = rng.normal(size=(n, 6)).astype(np.float32)
    # the female rows are noisier, so the groups' losses differ and the gap term acts
    female = np.array([spec.groups[g][2] == "female" for g in group_ids])
    labels = (features[:, 0] + np.where(female, 1.5, 0.2) * rng.normal(size=n) > 0).astype(np.int64)
    labels += (features[:, 1] > 1).astype(np.int64)
    data = [{"features": torch.tensor(features[i]), "labels": int(labels[i]), "group_ids": int(group_ids[i]),
             "example_ids": i} for i in range(n)]
    return data, spec


def collate(rows: list[dict]) -> dict:
    return {
        "features": torch.stack([r["features"] for r in rows]),
        "labels": torch.tensor([r["labels"] for r in rows]),
        "group_ids": torch.tensor([r["group_ids"] for r in rows]),
        "example_ids": [r["example_ids"] for r in rows],
    }


def make_trainer(out_dir: str, *, batch: int, accumulation: int = 1, steps: int = 1, objective: str = "minmaxgap",
                 options: dict | None = None, exact: bool = True, save_steps: int | None = None, model=None):
    data, spec = toy_data()
    args = FairTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
        max_steps=steps, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, use_cpu=True, report_to=[], logging_steps=1, seed=0, exact_accumulation=exact,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, disable_tqdm=True,
        ddp_find_unused_parameters=False, dataloader_drop_last=True,
    )
    obj = build_objective(objective, spec, options if options is not None else {"weight": "fixed", "lambda_init": 2.0, "missing": "skip"})
    return FairTrainer(model=model or ToyClassifier(), args=args, train_dataset=data, data_collator=collate, objective=obj)
