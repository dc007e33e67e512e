"""Training the tokenizer and the transformer (``var train-vae``, ``var train``)."""
from .common import NonFiniteLoss, Schedule
from .trainers import PatchDiscriminator, VARTrainer, VQVAETrainer

__all__ = ["NonFiniteLoss", "Schedule", "PatchDiscriminator", "VARTrainer", "VQVAETrainer"]
