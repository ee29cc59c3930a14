"""mtcore: one machine-translation Transformer in PyTorch and JAX/Flax, and the benchmarks that
compare them. Importing mtcore imports neither framework."""

from mtcore.backend import Backend, available, backend
from mtcore.batch import Batch, random_batch
from mtcore.config import PRESETS, GenerateConfig, ModelConfig, TrainConfig
from mtcore.errors import BackendUnavailable, MTCoreError

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Batch",
    "GenerateConfig",
    "MTCoreError",
    "ModelConfig",
    "PRESETS",
    "TrainConfig",
    "available",
    "backend",
    "random_batch",
]
__version__ = "0.1.0"
