"""ERM: the mean per-sample loss over the (global) batch, no fairness term."""
from __future__ import annotations

from llmfair.objectives.base import Objective, ObjectiveInputs, ObjectiveOutput, register_objective


@register_objective("erm")
class ERM(Objective):
    """Empirical risk minimisation: ``L = mean_i ℓ_i`` (IDI paper §4.1; METHODS.md §2.1)."""

    depends_only_on_per_sample_loss = True

    def forward(self, inputs: ObjectiveInputs) -> ObjectiveOutput:
        loss, mean = self.global_mean(inputs.per_sample_loss)
        return ObjectiveOutput(loss=loss, figures={"erm_loss": mean})
