"""Training: the FairTrainer (objective-driven ``transformers.Trainer``) and samplers."""
from llmfair.training.samplers import GroupCoveringSampler
from llmfair.training.trainer import FairTrainer, FairTrainingArguments, TrainingDivergedError

__all__ = ["FairTrainer", "FairTrainingArguments", "GroupCoveringSampler", "TrainingDivergedError"]
