"""qvg-serve scheduler: streams, page accounting, batching, memory-pressure policy, tenants.

Dependency rule: standard library only (no torch, numpy, triton, ray). A test imports this
package in a fresh interpreter and asserts none of those got loaded.
"""

QVG_SERVE_PACKAGE = "scheduler"

# The policy's public API (the page allocator's lives in scheduler.pages).
from .config import RUNGS, Priority, SchedulerConfig, TenantConfig  # noqa: E402
from .core import Scheduler  # noqa: E402
from .output import (  # noqa: E402
    Admission,
    BatchItem,
    EndedStream,
    Order,
    SchedulerOutput,
    StepResult,
)
from .stream import Flag, StreamSpec, StreamState  # noqa: E402

__all__ = [
    "QVG_SERVE_PACKAGE",
    "RUNGS",
    "Admission",
    "BatchItem",
    "EndedStream",
    "Flag",
    "Order",
    "Priority",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StepResult",
    "StreamSpec",
    "StreamState",
    "TenantConfig",
]
