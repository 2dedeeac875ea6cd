"""qvg-serve kernels: KV codecs (QVG and baselines), their pure-torch references, paged attention.

Dependency rule: torch and triton only (no ray, pydantic, fastapi, prometheus).
"""

QVG_SERVE_PACKAGE = "kernels"
