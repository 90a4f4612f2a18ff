"""Training: the FairTrainer (objective-driven ``transformers.Trainer``) and samplers."""
from llmfair.data.sampling import SAMPLERS, build_sampler, downsample_indices
from llmfair.training.samplers import GroupCoveringSampler
from llmfair.training.trainer import FairTrainer, FairTrainingArguments, TrainingDivergedError

__all__ = ["SAMPLERS", "build_sampler", "downsample_indices", "FairTrainer", "FairTrainingArguments", "GroupCoveringSampler", "TrainingDivergedError"]
