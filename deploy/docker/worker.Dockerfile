# syntax=docker/dockerfile:1.7
# A GPU worker: `python -m service.worker` (or torchrun around it), started as a Kubernetes Job
# by the API's kubernetes launcher. NVIDIA's TensorRT image brings CUDA, cuDNN and TensorRT
# with its Python bindings (25.01: CUDA 12.8, TensorRT 10.8, Ubuntu 24.04, Python 3.12).
# Build from the repository root:
#   docker build -f deploy/docker/worker.Dockerfile -t teachers-pet/worker:0.1.0 .
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.01-py3

FROM ${TENSORRT_IMAGE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Ubuntu's archive keeps only its current python3-venv, so it cannot be pinned usefully.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# System site packages: the image's TensorRT bindings stay importable from the venv.
RUN python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The default Linux torch wheels bring their CUDA runtime; versions pinned as in pyproject.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY compression /src/compression
COPY service /src/service
RUN pip install /src
RUN groupadd --gid 10001 tpet \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tpet
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
# A batch process: the manager watches it through its heartbeat and the Job's status.
HEALTHCHECK NONE
CMD ["python", "-m", "service.worker"]
