"""Optimizers and learning-rate schedules with torch.optim's names and formulas."""
from . import lr_scheduler
from .lr_scheduler import CosineAnnealingLR, LinearLR, LinearWarmup, LRScheduler, StepLR
from .optimizers import SGD, Adadelta, Adagrad, Adam, AdamW, Optimizer, RMSprop
from .step_scalars import capturable

__all__ = ["SGD", "Adadelta", "Adagrad", "Adam", "AdamW", "CosineAnnealingLR", "LRScheduler", "LinearLR",
           "LinearWarmup", "Optimizer", "RMSprop", "StepLR", "capturable", "lr_scheduler"]
