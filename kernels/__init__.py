"""qvg-serve kernels: KV codecs (QVG and baselines), their pure-torch references, the Triton
kernels of QVG (k-means assign/update, fused quantize, fused decode) and each codec's stored
tensor layout. The door is `codec` (encode / decode / predict_nbytes), `page_layout` (what a
span stores), `spec` (presets) and `container` (the Encoded bytes). Paged attention over the
pool is not here: it is the engine's (`qvg_serve/engine/paged_attention.py`).

Dependency rule: torch and triton only (no ray, pydantic, fastapi, prometheus).
"""

QVG_SERVE_PACKAGE = "kernels"
