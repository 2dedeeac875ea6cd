"""qvg-serve scheduler: streams, page accounting, batching, memory-pressure policy, tenants.

Dependency rule: standard library only (no torch, numpy, triton, ray). A test imports this
package in a fresh interpreter and asserts none of those got loaded.
"""

QVG_SERVE_PACKAGE = "scheduler"
