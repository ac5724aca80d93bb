# syntax=docker/dockerfile:1.7
# The API server: gRPC on 50051, metrics on 9464. In the dev overlay its local CPU workers run in
# the same container, so it carries the whole library with CPU-only torch.
# Build from the repository root:
#   docker build -f deploy/docker/api.Dockerfile -t teachers-pet/api:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU wheels first: the default Linux wheels carry CUDA libraries the API never uses.
# `torch==2.14.1` in pyproject accepts the installed 2.14.1+cpu.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md /src/
COPY compression /src/compression
COPY service /src/service
RUN pip install /src kubernetes==37.0.2

FROM ${PYTHON_IMAGE}
# Fashion-MNIST for the demo job: the Debian package `make demo` reads.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 tpet \
    && useradd --uid 10001 --gid 10001 --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin tpet
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /app/healthcheck.py
WORKDIR /app
# HOME on /tmp: the root filesystem is read-only in the pod; caches go to the emptyDir there.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001:10001
EXPOSE 50051 9464
# For plain Docker; Kubernetes ignores it and uses the native gRPC probes of the manifests.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "127.0.0.1:50051"]
ENTRYPOINT ["tpet"]
CMD ["serve", "--config", "/etc/tpet/server.yaml"]
