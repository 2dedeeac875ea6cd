# syntax=docker/dockerfile:1
# The qvg-serve serving image: Ray 2.60 (Python 3.11, CUDA 12.8) + CUDA torch + qvg-serve[serve].
# KubeRay runs it for the Ray head and the GPU workers (charts/qvg-serve); no public image exists:
#   docker build -t <registry>/qvg-serve:0.1.0 . && docker push <registry>/qvg-serve:0.1.0
#   helm install qvg charts/qvg-serve --set image.repository=<registry>/qvg-serve
# The chart's default image is qvg-serve:<appVersion>; tests/charts/test_image.py keeps this file,
# the chart (uid, Ray version, image tag) and pyproject.toml (version) in step.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128

# Stage 1: the wheel (package data included: the tiny model's weights).
FROM ${RAY_IMAGE} AS wheel
COPY --chown=1000:100 pyproject.toml README.md /home/ray/src/
COPY --chown=1000:100 kernels /home/ray/src/kernels
COPY --chown=1000:100 scheduler /home/ray/src/scheduler
COPY --chown=1000:100 qvg_serve /home/ray/src/qvg_serve
RUN pip wheel --no-cache-dir --no-deps -w /home/ray/wheels /home/ray/src

# Stage 2: the runtime.
FROM ${RAY_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
LABEL org.opencontainers.image.title="qvg-serve" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="qvg-serve on Ray Serve: AR video diffusion from a paged QVG KV pool"
# The base image's user `ray` (uid 1000, group users = 100): the chart's podSecurityContext runs
# as exactly this uid/gid with runAsNonRoot, a read-only root filesystem and /tmp as an emptyDir.
USER 1000:100
# CUDA torch first from its index; the constraint then keeps pip from swapping it for another
# build while resolving the serve extra (xformers pins torch: a mismatch fails the build here).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
 && echo "torch==${TORCH_VERSION}" > /tmp/torch-constraint.txt
COPY --from=wheel --chown=1000:100 /home/ray/wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/torch-constraint.txt \
      "$(echo /tmp/wheels/qvg_serve-*.whl)[serve]" \
 && rm -rf /tmp/wheels /tmp/torch-constraint.txt \
 && python -c "import qvg_serve.serve.app, ray; assert ray.__version__.startswith('2.60.')"
# Writable caches under /tmp (the only writable path besides /dev/shm in the chart's pods); no
# .pyc writes into the read-only site-packages.
ENV XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/.triton \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /home/ray
