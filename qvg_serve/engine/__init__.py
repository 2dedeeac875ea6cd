"""The tensor runtime: the Engine (its door), the pool's arenas, paged reads, the sampler.

Imports no Ray and no FastAPI (a test checks it in a fresh interpreter). `serve/` reaches the
engine only through `Engine`'s public methods and the types named here.
"""

from qvg_serve.engine.config import EngineConfig
from qvg_serve.engine.engine import Engine
from qvg_serve.engine.report import (
    CancelResult,
    Chunk,
    KVStats,
    ModelFacts,
    ResumeState,
    StepReport,
    StepStats,
)
from qvg_serve.engine.runtime import Runtime, load_runtime

__all__ = [
    "CancelResult",
    "Chunk",
    "Engine",
    "EngineConfig",
    "KVStats",
    "ModelFacts",
    "ResumeState",
    "Runtime",
    "StepReport",
    "StepStats",
    "load_runtime",
]
