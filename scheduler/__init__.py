"""qvg-serve scheduler: streams, page accounting, batching, memory-pressure policy, tenants.

Dependency rule: standard library only (no torch, numpy, triton, ray). A test imports this
package in a fresh interpreter and asserts none of those got loaded.
"""

QVG_SERVE_PACKAGE = "scheduler"

# The policy's public API (the page allocator's lives in scheduler.pages) and its
# vocabularies (scheduler.vocab).
from .config import Priority, SchedulerConfig, TenantConfig  # noqa: E402
from .core import Scheduler  # noqa: E402
from .lifecycle import IntakeView, admission  # noqa: E402
from .output import (  # noqa: E402
    Admission,
    BatchItem,
    EndedStream,
    Order,
    SchedulerOutput,
    StepResult,
)
from .stream import StreamSpec  # noqa: E402
from .vocab import (  # noqa: E402
    RUNGS,
    TIERS,
    Action,
    EndReason,
    Event,
    Flag,
    Format,
    PassKind,
    PlanKind,
    RejectReason,
    Rung,
    StreamState,
    Tier,
    Unit,
)

__all__ = [
    "QVG_SERVE_PACKAGE",
    "IntakeView",
    "admission",
    "RUNGS",
    "TIERS",
    "Action",
    "Admission",
    "BatchItem",
    "EndReason",
    "EndedStream",
    "Event",
    "Flag",
    "Format",
    "Order",
    "PassKind",
    "PlanKind",
    "Priority",
    "RejectReason",
    "Rung",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "StepResult",
    "StreamSpec",
    "StreamState",
    "TenantConfig",
    "Tier",
    "Unit",
]
