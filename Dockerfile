# syntax=docker/dockerfile:1
# gpumix image: one image for `gpumix webhook`, `gpumix controller` and the CLI.
#   docker build -t ghcr.io/gpumix/gpumix:0.1.0 .
# The builder installs gpumix and its dependencies into a virtual environment (every
# dependency ships binary wheels, so no compiler is needed); the final stage is the
# slim Python image plus that environment, run as an unprivileged numeric user.
# tests/manifests/test_image_build_steps.py runs the builder's steps in a clean venv.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/gpumix
COPY pyproject.toml README.md ./
COPY gpumix ./gpumix
COPY webhook ./webhook
COPY controller ./controller
COPY optimizer ./optimizer
# A wheel of gpumix itself, then that wheel with every extra (webhook, controller,
# CLI and demo) and the dependencies into the venv.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/gpumix/bin/pip wheel --no-deps --wheel-dir /src/dist . \
 && /opt/gpumix/bin/pip install "$(echo /src/dist/gpumix-*.whl)[all]" \
 && /opt/gpumix/bin/gpumix --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gpumix" \
      org.opencontainers.image.description="Admission webhook, scaling controller and CLI for heterogeneous-GPU model serving on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/gpumix/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=builder /opt/gpumix /opt/gpumix
# 65532: the conventional "nonroot" uid/gid; the Kubernetes manifests set the same.
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["gpumix"]
CMD ["--help"]
