"""Optimisation: the glance fine-tune and Stages I–III (appendix A.3), and Stage II's PPO (A.2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .choices import Amp, PolicyTraining, PPOBaseline, Stage2Images, Stage3Locations, check_choices, fill
from .families import FAMILY_DEFAULTS
from .model import GFNetConfig

@dataclass(frozen=True)
class PPOConfig:
    """Stage II hyper-parameters (appendix A.2)."""

    lr: float = field(default=3e-4, metadata={"help": "Adam LR of π in Stage II (appendix A.2's 3e-4; not scaled with the batch)"})
    betas: tuple[float, float] = (0.9, 0.999)
    gamma: float = 0.7
    clip: float = 0.2  # ε
    value_coef: float = 0.5  # c1
    entropy_coef: float = 0.01  # c2
    normalize_returns: bool = True  # as the authors' release; the paper is silent
    baseline: PPOBaseline = field(default="critic", metadata={
        "help": "PPO's advantage baseline: the critic V(s_t) (Eq. 7), or the return of π's mean (greedy) locations on "
                "the same image (self-critical; beyond the paper)"})

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the glance fine-tune and Stages I–III (appendix A.2–A.3).

    ``None`` fields come from the family defaults (:meth:`for_model`).  The defaults follow
    the authors' release where the paper is silent: SGD rates scaled with the batch from
    256, Stage III on sampled locations; the glance fine-tune (appendix B.1, which gives no
    epoch count) runs until its held-out accuracy stops improving.
    """

    batch_size: int = field(default=256, metadata={"help": "global batch size"})
    momentum: float = 0.9
    lr_classifier: float = field(default=0.1, metadata={"help": "Stage I LR of fC (at lr_reference_batch)"})
    lr_classifier_stage3: float = field(default=0.01, metadata={"help": "Stage III LR of fC (at lr_reference_batch)"})
    lr_encoder: float | None = field(default=None, metadata={"help": "LR of fG and fL (default: the family's, at lr_reference_batch)"})
    scale_lr: bool = field(default=True, metadata={
        "help": "scale the SGD learning rates linearly by batch_size / lr_reference_batch (appendix A.3's rates are for 256)"})
    lr_reference_batch: int = field(default=256, metadata={"help": "the batch size the SGD learning rates are given for"})
    weight_decay: float | None = None
    aux_weight: float | None = field(default=None, metadata={"help": "λ of the deep-supervision loss"})
    freeze_glance: bool | None = None
    glance_epochs: int = field(default=30, metadata={"help": "most epochs of the glance fine-tune (see glance_patience)"})
    glance_patience: int = field(default=2, metadata={
        "help": "stop the glance fine-tune after this many epochs without a better held-out accuracy and keep the best "
                "epoch (0: run glance_epochs, keep the last)"})
    stage1_epochs: int | None = None
    stage2_epochs: int = 15
    stage3_epochs: int | None = None
    run_stage3: bool | None = None
    stage3_locations: Stage3Locations = field(default="sample", metadata={
        "help": "Stage III patches: sampled from N(π's mean, std²) clipped to [0, 1], as the release, or π's mean"})
    glance_lr: float | None = field(default=None, metadata={"help": "LR of the low-resolution fine-tune of fG (at lr_reference_batch)"})
    stage2_images: Stage2Images = field(default="augmented", metadata={
        "help": "Stage II images: the training augmentation, as the release, or the training images as evaluation serves "
                "them (resize and centre crop), the view π acts on at test time (beyond the paper; the built-in set has "
                "no augmentation to leave out)"})
    ppo: PPOConfig = field(default_factory=PPOConfig)
    policy_training: PolicyTraining = field(default="ppo", metadata={
        "help": "how π learns: ppo (the paper: Stage I random patches, Stage II PPO, Stage III) or differentiable (beyond the "
                "paper, after AdaFocusV2: Stage I, then one end-to-end stage in which π's regions get gradients from the "
                "classification loss through the resampling crop; needs --crop resample)"})
    end2end_epochs: int = field(default=5, metadata={"help": "epochs of the end-to-end stage, after Stage I"})
    lr_policy: float = field(default=0.001, metadata={"help": "end-to-end stage: SGD LR of π (at lr_reference_batch)"})
    end2end_random: float = field(default=0.5, metadata={
        "help": "end-to-end stage: fraction of each batch's images that read uniformly random regions instead of π's "
                "(AdaFocusV2's diversity augmentation: fL and fC keep learning from every place)"})
    amp: Amp = field(default="none", metadata={"help": "mixed precision"})
    channels_last: bool = True  # oneDNN convs: a CPU Stage I step 1.9x faster (python -m benchmarks.bench_memory_format)
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoders"})
    seed: int = 0
    checkpoint_every: int = field(default=0, metadata={"help": "also checkpoint every N optimiser steps"})
    keep_epochs: tuple[int, ...] = ()  # also keep the weights after these epochs, as <stage>.epoch<N>.safetensors
    distill_weight: float = field(default=0.0, metadata={
        "help": "Stages I/III: weight of a distillation loss from a teacher's soft targets (beyond the paper; 0: none)"})
    distill_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the distillation loss"})
    max_steps_per_epoch: int = field(default=0, metadata={"help": "cap batches per epoch (0: no cap), for quick runs"})

    def __post_init__(self) -> None:
        if self.lr_reference_batch < 1 or self.batch_size < 1:
            raise ValueError(f"batch_size and lr_reference_batch must be >= 1 (got {self.batch_size}, {self.lr_reference_batch})")
        if self.glance_patience < 0:
            raise ValueError(f"glance_patience must be >= 0 (got {self.glance_patience})")
        if not 0.0 <= self.end2end_random <= 1.0:
            raise ValueError(f"end2end_random must be in [0, 1] (got {self.end2end_random})")
        check_choices(self)

    @property
    def lr_scale(self) -> float:
        """The factor of every SGD learning rate: the linear scaling rule from the batch of
        appendix A.3 (256) to ``batch_size``, or 1 without ``scale_lr``.  PPO's Adam rate
        is not scaled."""
        return self.batch_size / self.lr_reference_batch if self.scale_lr else 1.0

    def for_model(self, model_config: GFNetConfig) -> TrainConfig:
        d = FAMILY_DEFAULTS[model_config.family]
        return fill(self, {
            "lr_encoder": d.encoder_lr,
            "weight_decay": d.weight_decay,
            "aux_weight": d.aux_weight,
            "freeze_glance": d.freeze_glance,
            "stage1_epochs": d.stage1_epochs,
            "stage3_epochs": d.stage1_epochs,
            "run_stage3": d.stage3,
            "glance_lr": d.encoder_lr,
        })

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
