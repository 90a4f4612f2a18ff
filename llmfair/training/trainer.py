"""FairTrainer: a ``transformers.Trainer`` whose ``compute_loss`` asks an llmfair objective.

The model is any ``nn.Module`` whose ``forward(**batch)`` returns a mapping with
``per_sample_loss`` (B,), ``logits`` (B, K) and optionally ``features`` (B, D) — the speech-LLM
classifier and the frozen-feature head both do. Going through ``forward`` keeps DDP's gradient
hooks and DeepSpeed's engine in charge. The batch carries ``group_ids`` (and optionally
``sample_index`` and ``example_ids``), which the trainer removes before the forward.

Loss scaling is owned here (``loss_is_scaled_for_ga = True``): objectives return losses already
scaled for data-parallel averaging, and with gradient accumulation the trainer makes the step
exact for objectives that depend on the batch only through per-sample losses (ERM, MinMaxGAP):
before the accumulated step it runs a no-grad pass over all its micro-batches, evaluates the
objective once on the whole step (statistics all-reduced across ranks), takes the per-sample
weights w_i = ∂L/∂ℓ_i, and back-propagates Σ_i w_i ℓ_i per micro-batch — the gradient of the
objective on the concatenated batch, at the cost of one extra forward per micro-batch. The
pre-pass runs the model in eval mode; with dropout the weights come from dropout-free losses.
"""
from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from llmfair.errors import LlmfairError
from llmfair.objectives import Objective, ObjectiveInputs

logger = logging.getLogger(__name__)

OBJECTIVE_STATE_FILE = "objective_state.safetensors"
META_KEYS = ("group_ids", "sample_index", "example_ids")


class TrainingDivergedError(LlmfairError):
    """The loss became NaN or infinite; names the step and the examples of the batch."""


@dataclass
class FairTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what fairness training adds."""

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "keep every batch column: group ids and labels are not forward() arguments"})
    exact_accumulation: bool = field(
        default=True,
        metadata={"help": "with gradient accumulation, compute the objective on the whole accumulated batch "
                          "(one extra no-grad forward per micro-batch) so the step equals one big batch"},
    )


class FairTrainer(Trainer):
    """Trainer whose loss comes from ``objective`` (see the module docstring)."""

    def __init__(self, *args: Any, objective: Objective, train_sampler: torch.utils.data.Sampler | None = None,
                 label_key: str = "labels", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label_key = label_key  # the batch key of the class labels objectives read
        self.objective = objective.to(self.args.device)
        self.loss_is_scaled_for_ga = True
        self._train_sampler_override = train_sampler
        self._figures: dict[str, list[float]] = defaultdict(list)
        self.trace_records: list[dict[str, Any]] = []  # every step's objective figures (training.trace)
        self._pending_weights: list[torch.Tensor] = []

    # ------------------------------------------------------------------ optimiser
    def create_optimizer(self, model=None):
        """The model's optimiser plus one parameter group for the objective's own modules
        (auxiliary heads, adversaries). Those modules are not wrapped by DDP, so their gradients
        are averaged over ranks by a hook here."""
        optimizer = super().create_optimizer(model)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        if params and not getattr(self, "_objective_params_added", False):
            optimizer.add_param_group({"params": params, "weight_decay": self.args.weight_decay})
            self._objective_params_added = True
            world = self.objective.reducer.world_size
            if world > 1:
                for p in params:
                    p.register_post_accumulate_grad_hook(self._average_over_ranks)
        return optimizer

    def _average_over_ranks(self, param: torch.nn.Parameter) -> None:
        torch.distributed.all_reduce(param.grad)
        param.grad /= torch.distributed.get_world_size()

    # ------------------------------------------------------------------ data
    def _get_train_sampler(self, train_dataset=None):
        if self._train_sampler_override is not None:
            return self._train_sampler_override
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------ loss
    @staticmethod
    def _split(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        meta = {k: inputs[k] for k in META_KEYS if k in inputs}
        return {k: v for k, v in inputs.items() if k not in META_KEYS}, meta

    def _check_finite(self, per_sample_loss: torch.Tensor, meta: dict[str, Any]) -> None:
        bad = ~torch.isfinite(per_sample_loss.detach())
        if bool(bad.any()):
            ids = meta.get("example_ids")
            where = [ids[i] for i in torch.nonzero(bad).flatten().tolist()] if ids is not None else torch.nonzero(bad).flatten().tolist()
            raise TrainingDivergedError(
                f"non-finite loss at step {self.state.global_step} for examples {where[:8]}; training stopped, "
                f"the last checkpoint in {self.args.output_dir} is intact (lower the learning rate or use fp32/bf16)")

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        batch, meta = self._split(inputs)
        outputs = model(**batch)
        per_sample_loss = outputs["per_sample_loss"]
        self._check_finite(per_sample_loss, meta)
        if model.training and self._pending_weights:
            weights = self._pending_weights.pop(0).to(per_sample_loss.device, per_sample_loss.dtype)
            loss = (weights * per_sample_loss).sum()
        else:
            self.objective.train(model.training)
            result = self.objective(ObjectiveInputs(
                per_sample_loss=per_sample_loss, group_ids=meta["group_ids"], logits=outputs.get("logits"),
                labels=batch.get(self.label_key), features=outputs.get("features"), sample_index=meta.get("sample_index"),
                inputs=outputs.get("inputs"),
            ))
            loss = result.loss
            if model.training:
                self._record(result.figures)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        exact = (self.args.exact_accumulation and len(batch_samples) > 1
                 and getattr(self.objective, "depends_only_on_per_sample_loss", False))
        self._pending_weights = self._step_weights(batch_samples) if exact else []
        return batch_samples, num_items

    def _step_weights(self, batch_samples: list[dict[str, Any]]) -> list[torch.Tensor]:
        """∂L/∂ℓ_i of the objective on the whole accumulated step, split per micro-batch."""
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        losses, groups = [], []
        with torch.no_grad():
            for sample in batch_samples:
                batch, meta = self._split(self._prepare_inputs(sample))
                per_sample = model(**batch)["per_sample_loss"].detach()
                self._check_finite(per_sample, meta)
                losses.append(per_sample)
                groups.append(meta["group_ids"])
        model.train(was_training)
        leaf = torch.cat(losses).requires_grad_(True)
        self.objective.train(True)
        result = self.objective(ObjectiveInputs(per_sample_loss=leaf, group_ids=torch.cat(groups)))
        (weights,) = torch.autograd.grad(result.loss, leaf)
        self._record(result.figures)
        return list(torch.split(weights.detach(), [len(x) for x in losses]))

    # ------------------------------------------------------------------ logging
    def _record(self, figures: dict[str, float]) -> None:
        for name, value in figures.items():
            if math.isfinite(value):
                self._figures[name].append(value)
        if figures:  # global_step counts finished steps: this record belongs to the next one
            self.trace_records.append({"step": self.state.global_step + 1, **figures})

    def trace_rows(self) -> list[dict[str, Any]]:
        """One row per optimiser step (:func:`llmfair.training.trace.step_rows`)."""
        from llmfair.training.trace import step_rows

        return step_rows(self.trace_records)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._figures and "loss" in logs:
            for name, values in self._figures.items():
                logs[f"fair/{name}"] = sum(values) / len(values)
            self._figures.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from safetensors.torch import save_file

            from llmfair._atomic import atomic_path

            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            from llmfair._atomic import write_json
            from llmfair.training.trace import CHECKPOINT_TRACE_FILE

            write_json(os.path.join(folder, CHECKPOINT_TRACE_FILE), self.trace_rows())
            state = {k: v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()}
            with atomic_path(os.path.join(folder, OBJECTIVE_STATE_FILE)) as tmp:
                save_file(state, str(tmp))  # last: its presence marks a complete checkpoint

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Weights as safetensors and the arguments as JSON (never pickle); modules that know their
        trainable part (``save_trainable``: the speech-LLM adapter) save only that."""
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "save_trainable"):
            model.save_trainable(output_dir, state_dict=state_dict)
        else:
            from safetensors.torch import save_file

            from llmfair._atomic import atomic_path

            state = state_dict if state_dict is not None else model.state_dict()
            with atomic_path(os.path.join(output_dir, "model.safetensors")) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
        if self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
            self.processing_class.save_pretrained(output_dir)
        from llmfair._atomic import write_text

        write_text(os.path.join(output_dir, "training_args.json"), self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        unwrapped = self.accelerator.unwrap_model(model if model is not None else self.model)
        if hasattr(unwrapped, "load_trainable") and not self.is_deepspeed_enabled:
            unwrapped.load_trainable(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, OBJECTIVE_STATE_FILE)
        if os.path.isfile(path):
            from safetensors.torch import load_file

            self.objective.load_state_dict(load_file(path, device=str(self.args.device)))
            logger.info("objective state restored from %s", path)
        from llmfair.training.trace import CHECKPOINT_TRACE_FILE

        trace = os.path.join(resume_from_checkpoint, CHECKPOINT_TRACE_FILE)
        if os.path.isfile(trace):
            import json

            with open(trace, encoding="utf-8") as handle:
                self.trace_records = json.load(handle)


def shutdown_distributed(exit_code: int | None = None) -> None:
    """Wait for every rank, then destroy the process group; entry points call this last.

    Multi-process CPU (gloo) and DeepSpeed runs sometimes abort in C++ teardown at interpreter exit
    ("terminate called without an active exception", measured after training had finished), which
    turns a finished run into a failed launch. The cause, reproduced in a dozen lines
    (``docs/experiments/gloo_teardown.py``): a DDP-wrapped module whose reducer still holds the
    gloo process group at interpreter exit aborts in 4 of 30 launches even after ``barrier()`` and
    ``destroy_process_group()``; releasing the module first, 0 of 30. The Trainer, its accelerator
    and the wrapped model are referenced from many places, so with ``exit_code`` the process leaves
    through ``os._exit`` once every output is flushed, skipping that teardown.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if exit_code is not None:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(exit_code)
