"""glancefocus: GFNet (Glance and Focus Networks, NeurIPS 2020) in PyTorch."""

from .budget import PAPER_QS, StepScores, budgeted_accuracy, budgeted_curve, exit_fractions, exit_steps, find_thresholds
from .config import DataConfig, GFNetConfig, PPOConfig, TrainConfig
from .model import GFNet, GFNetOutput, Prediction
from .patches import crop_patches, glance_resize
from .recipes import PRESETS, RECIPES, Recipe
from .weights import Weights

__all__ = [
    "DataConfig",
    "GFNet",
    "GFNetConfig",
    "GFNetOutput",
    "PAPER_QS",
    "PPOConfig",
    "PRESETS",
    "Prediction",
    "RECIPES",
    "Recipe",
    "StepScores",
    "TrainConfig",
    "Weights",
    "budgeted_accuracy",
    "budgeted_curve",
    "crop_patches",
    "exit_fractions",
    "exit_steps",
    "find_thresholds",
    "glance_resize",
]
__version__ = "0.1.0"
