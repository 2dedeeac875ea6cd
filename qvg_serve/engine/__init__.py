"""The tensor runtime: the Engine (its door), the pool's arenas, paged reads, the sampler.

Imports no Ray and no FastAPI (a test checks it in a fresh interpreter). `serve/` reaches the
engine only through `Engine`'s public methods and the types named here.
"""
