# syntax=docker/dockerfile:1.7
#
# Targets (BuildKit, the default builder since Docker 23, builds only the stages a target needs):
#
#   docker build -t embedder .                                   # runtime: models mounted at /app/models
#   docker build -t embedder:baked --target runtime-baked \
#       --build-context models=./models .                        # runtime with the models inside
#   docker build -t embedder-export --target export .            # torch + the exporter, for `make models`
#
#   docker run --rm -p 50051:50051 -p 8000:8000 -p 9090:9090 -v "$PWD/models:/app/models:ro" embedder
#   docker run --rm -v "$PWD/models:/app/models" embedder-export \
#       clip openai/clip-vit-base-patch32 --out /app/models/clip-vit-base-patch32
#
# tests/ops/test_dockerfile.py checks this file's structure and replays its builder and runtime
# stages without a Docker engine (their COPY and RUN lines are read from here): keep the runtime's
# single `pip install` of the lock and the wheel.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in Kubernetes; bytecode is compiled at
# install time instead (pip's default), so nothing needs writing at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# One numeric, non-root identity for every image: Kubernetes' runAsNonRoot can only verify a
# numeric USER, and a fixed uid lets a mounted models volume be made readable on purpose.
RUN groupadd --system --gid 10001 embedder \
 && useradd --system --uid 10001 --gid embedder --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin embedder


# ---- builder: the project as a wheel (the generated gRPC stubs in embedder/v1 are committed) ----
FROM base AS builder
WORKDIR /src
# README.md* : pyproject names a readme; the glob keeps the build working while it is absent.
COPY pyproject.toml README.md* ./
COPY embedder/ embedder/
COPY export/ export/
RUN pip wheel --no-deps --wheel-dir /wheels .


# ---- export: torch + transformers + optimum, to turn checkpoints into model folders ----
FROM base AS export
WORKDIR /app
# torch is always pinned: an unpinned torch resolves to a multi-GB CUDA build. PyTorch's CPU
# index is used because a Docker build host has general internet access (the project's dev and
# CI machines reach only package registries, so tests/ops replays the runtime stages, not this
# one). The pin is the `export` extra's (a test checks they agree), so the next install keeps
# this CPU build: "2.13.0+cpu" satisfies "==2.13.0".
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md* ./
COPY embedder/ embedder/
COPY export/ export/
# DL3013 (unpinned pip install): the versions live in pyproject's `export` extra, one place.
# open_clip_torch --no-deps: only its CLIP BPE merges file is read, for random-init builds
# (export/clip_vocab.py); its dependencies would pull torchvision and another torch.
# hadolint ignore=DL3013
RUN pip install ".[export]" \
 && pip install --no-deps "open_clip_torch==3.3.0"
# Downloads and caches go under /tmp, writable by the non-root user (/app is root's); mount a
# volume at /tmp/huggingface to keep hub downloads between runs.
ENV HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache
# The mounted models dir must be writable by uid 10001 (or run with --user "$(id -u)").
USER 10001:10001
ENTRYPOINT ["python", "-m", "export"]
CMD ["--help"]


# ---- runtime-base: the wheel alone; no torch, transformers or optimum ----
FROM base AS runtime-base
WORKDIR /app
# The wheel and the lock come in through bind mounts, so neither becomes a layer of this image.
# No `[export]` extra: the runtime is onnxruntime + numpy + pillow + grpcio + tokenizers + the HTTP
# stack, every version pinned by requirements/runtime.lock (`make lock`), so a registry release never
# changes the image. --no-deps: the lock is the whole closure less the Hugging Face Hub client
# (with hf-xet and fsspec) that tokenizers declares but imports only for `from_pretrained`, which
# the server never calls (it reads a model folder's tokenizer.json). tests/ops replays this line
# and serves images and text from it.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements,target=/requirements \
    pip install --no-cache-dir --no-deps -r /requirements/runtime.lock /wheels/*.whl
# Root-owned and read-only to the server: it only ever reads models.
RUN mkdir /app/models
# MALLOC_ARENA_MAX=2 caps glibc's per-thread malloc heaps, where images are decoded: resident
# memory they hold, not throughput (docs/performance.md, design choices).
ENV EMBEDDER_ADDRESS=0.0.0.0:50051 \
    EMBEDDER_HTTP_ADDRESS=0.0.0.0:8000 \
    EMBEDDER_MODELS_DIR=/app/models \
    EMBEDDER_METRICS_ADDRESS=0.0.0.0:9090 \
    EMBEDDER_LOG_FORMAT=json \
    MALLOC_ARENA_MAX=2
# 50051: gRPC (Embed, ListModels, grpc.health.v1, reflection); 8000: HTTP (OpenAI /v1/embeddings,
# /v1/models, /health/live, /health/ready); 9090: Prometheus /metrics.
EXPOSE 50051 8000 9090
USER 10001:10001
# `embedder health` exits 0 iff the server reports SERVING. It speaks plaintext: with TLS on
# (EMBEDDER_TLS_CERT), rely on the orchestrator's own probe instead. start-period covers --preload
# of the full-size models; timeout covers the client's retry backoff on UNAVAILABLE (~2 s).
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["embedder", "health", "--server", "127.0.0.1:50051", "--timeout", "2"]
# Exec form: `embedder` is PID 1 itself, with no shell in between to swallow signals. The server
# installs its own SIGTERM/SIGINT handlers (health -> NOT_SERVING, drain in-flight calls for
# EMBEDDER_SHUTDOWN_GRACE_S, exit 0), which is what PID 1 needs: the kernel drops signals PID 1
# has no handler for. It starts no child processes, so there are no zombies for tini to reap
# (`docker run --init` adds one anyway if a future version does).
ENTRYPOINT ["embedder"]
CMD ["serve", "--preload"]


# ---- models: what runtime-baked bakes in ----
# By default the model.json files of the build context (.dockerignore keeps the multi-hundred-MB
# *.onnx files out of every build). To bake real models, override this stage with a named context:
# `--build-context models=./models` sends that folder, weights included.
FROM scratch AS models
COPY models/ /


# ---- runtime-baked: runtime with the models inside the image (no volume to provision) ----
FROM runtime-base AS runtime-baked
COPY --from=models / /app/models/


# ---- runtime (default target): models from a volume mounted at /app/models ----
FROM runtime-base AS runtime
VOLUME ["/app/models"]
