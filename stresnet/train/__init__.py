"""Fine-tuning of compressed students: KD loss, deterministic DDP-aware data, and the training engine.

``finetune`` and ``TrainConfig`` are loaded on first use, so that
``python -m stresnet.train.engine`` does not import the engine twice.
"""
from .distill import kd_loss

__all__ = ["TrainConfig", "finetune", "kd_loss"]


def __getattr__(name: str):
    if name in ("TrainConfig", "finetune", "build_models"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(name)
