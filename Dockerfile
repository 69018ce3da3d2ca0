# syntax=docker/dockerfile:1
# gpumix images, one per component, from one Dockerfile (multi-stage targets):
#   docker build --target webhook    -t ghcr.io/gpumix/gpumix-webhook:0.1.0 .     the base install
#   docker build --target controller -t ghcr.io/gpumix/gpumix-controller:0.1.0 .  gpumix[controller]
#   docker build                     -t ghcr.io/gpumix/gpumix:0.1.0 .             gpumix[all]: CLI, demo
# The `wheel` stage builds gpumix's wheel, `wheel-runtime` the same without the demo,
# the simulator and the API emulator; each `venv-*` stage installs one with the extra of
# its role and the dependencies into a virtual environment without pip (the base image's
# pip installs into it; every dependency ships binary wheels, so no compiler is needed);
# each image is the slim Python image
# plus one of those environments, run as an unprivileged numeric user. Installed sizes:
# docs/architecture.md, "Packaging".
# tests/manifests/test_image_build_steps.py runs every target's steps on the test machine.

ARG PYTHON_IMAGE=python:3.11-slim

# gpumix's sources, as the wheels are built from them.
FROM ${PYTHON_IMAGE} AS source
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpumix ./gpumix
COPY webhook ./webhook
COPY controller ./controller
COPY optimizer ./optimizer

# The whole package, as published: the CLI image.
FROM source AS wheel
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /src/dist .

# The runtime images' wheel: the same package without the demo, the simulator and the API
# emulator, which neither the webhook nor the controller imports (an import-linter
# contract in pyproject.toml holds that); `gpumix demo` and `gpumix simulate` then say
# they are not installed in this image.
FROM source AS wheel-runtime
RUN --mount=type=cache,target=/root/.cache/pip \
    rm -r gpumix/demo gpumix/simulate gpumix/emulator \
 && python -m pip wheel --no-deps --wheel-dir /src/dist .

# The admission webhook and `gpumix check`: no OR-Tools, NumPy or matplotlib, no demo.
FROM ${PYTHON_IMAGE} AS venv-webhook
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=wheel-runtime /src/dist /src/dist
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip /opt/gpumix \
 && python -m pip --python /opt/gpumix/bin/python install "$(echo /src/dist/gpumix-*.whl)" \
 && /opt/gpumix/bin/gpumix webhook --help > /dev/null

# The scaling controller: adds OR-Tools and NumPy.
FROM ${PYTHON_IMAGE} AS venv-controller
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=wheel-runtime /src/dist /src/dist
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip /opt/gpumix \
 && python -m pip --python /opt/gpumix/bin/python install "$(echo /src/dist/gpumix-*.whl)[controller]" \
 && /opt/gpumix/bin/gpumix controller --help > /dev/null

# The CLI: every command, the demo and the simulator.
FROM ${PYTHON_IMAGE} AS venv-all
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=wheel /src/dist /src/dist
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv --without-pip /opt/gpumix \
 && python -m pip --python /opt/gpumix/bin/python install "$(echo /src/dist/gpumix-*.whl)[all]" \
 && /opt/gpumix/bin/gpumix --help > /dev/null

# What every image shares.
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/gpumix/gpumix"
ENV PATH=/opt/gpumix/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# 65532: the conventional "nonroot" uid/gid; the Kubernetes manifests set the same.
USER 65532:65532
ENTRYPOINT ["gpumix"]
CMD ["--help"]

FROM runtime AS webhook
LABEL org.opencontainers.image.title="gpumix-webhook" \
      org.opencontainers.image.description="gpumix admission webhook and gpumix check"
COPY --from=venv-webhook /opt/gpumix /opt/gpumix
EXPOSE 8443 8080

FROM runtime AS controller
LABEL org.opencontainers.image.title="gpumix-controller" \
      org.opencontainers.image.description="gpumix scaling controller: GPU-mix optimizer, plans, audit"
COPY --from=venv-controller /opt/gpumix /opt/gpumix
EXPOSE 8080

# The default target: the CLI with every extra.
FROM runtime AS cli
LABEL org.opencontainers.image.title="gpumix" \
      org.opencontainers.image.description="Admission webhook, scaling controller and CLI for heterogeneous-GPU model serving on Kubernetes"
COPY --from=venv-all /opt/gpumix /opt/gpumix
