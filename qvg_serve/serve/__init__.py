"""Everything Ray Serve and HTTP: app builder, ingress API + schema, replica, request router,
engine-loop thread, frames, metrics, `AppConfig`, the serve CLI.

Imports nothing at package import, so `qvg_serve.serve.video` or `.config` load without Ray.
"""
