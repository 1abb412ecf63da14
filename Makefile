# The README's two commands: `make run` and `make test`. Everything else supports them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ADDRESS ?= 127.0.0.1:50051
HTTP_ADDRESS ?= 127.0.0.1:8000
MODELS_DIR ?= models
DEFAULT_MODELS := clip-vit-base-patch32=openai/clip-vit-base-patch32=clip dinov2-small=facebook/dinov2-small=dinov2
# `make run SIGLIP=1` also exports and serves SigLIP 2 B/16 (images and texts; a 1.1 GB text graph,
# minutes to export): the default set stays CLIP + DINOv2 so a first start stays fast.
SIGLIP_MODEL := siglip2-base-patch16-224=google/siglip2-base-patch16-224=siglip
SERVED_MODELS = $(DEFAULT_MODELS) $(if $(SIGLIP),$(SIGLIP_MODEL))
# Typed stubs for the gRPC service come from mypy-protobuf's plugin (embedder_pb2_grpc.pyi).
PROTO_GEN = $(BIN)/python -m grpc_tools.protoc -Iproto --python_out=$(1) --pyi_out=$(1) --grpc_python_out=$(1) \
	--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=$(1) proto/embedder/v1/embedder.proto

.PHONY: run test venv lock proto proto-check models lint bench fuzz clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Pinned torch first: an unpinned resolve would pull a multi-GB CUDA build.
# PYTHONWARNINGS: setuptools' editable-install notice is not the user's concern.
# open_clip_torch only for the CLIP BPE merges file it ships (export/clip_vocab.py): --no-deps,
# as its dependencies would pull torchvision and another torch.
# Installs are constrained by the committed lock, so a verdict never changes because a registry
# published a release overnight; pyproject.toml keeps ranges for users. `make lock` refreshes it.
OPEN_CLIP := open_clip_torch==3.3.0
LOCK := requirements/dev.lock
$(VENV)/.installed: pyproject.toml Makefile $(LOCK) $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) "torch==2.13.0"
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet -c $(LOCK) -e ".[export,dev]"
	$(BIN)/pip install --quiet --no-deps "$(OPEN_CLIP)"
	touch $@

venv: $(VENV)/.installed

# On purpose only: resolve pyproject's ranges afresh in a throw-away venv and write
# requirements/dev.lock (everything make test installs) and requirements/runtime.lock (the
# server's closure without the unused Hub client, which the Docker runtime stage installs).
LOCK_VENV := .lock-venv
lock:
	rm -rf $(LOCK_VENV) && $(PY) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/pip install --quiet "torch==2.13.0"
	PYTHONWARNINGS=ignore $(LOCK_VENV)/bin/pip install --quiet ".[export,dev]"
	$(LOCK_VENV)/bin/pip install --quiet --no-deps "$(OPEN_CLIP)"
	$(LOCK_VENV)/bin/python tools/lock.py requirements
	rm -rf $(LOCK_VENV) build

# Stubs are generated into embedder/v1/ (the proto package embedder.v1 is importable as is).
proto: venv
	$(call PROTO_GEN,.)

# Fails when the committed stubs differ from what the proto generates.
proto-check: venv
	@tmp=$$(mktemp -d) && $(call PROTO_GEN,$$tmp) && \
	for f in embedder_pb2.py embedder_pb2.pyi embedder_pb2_grpc.py embedder_pb2_grpc.pyi; do \
	  diff -q $$tmp/embedder/v1/$$f embedder/v1/$$f || { echo "embedder/v1/$$f is stale: run make proto"; exit 1; }; \
	done && rm -rf $$tmp && echo "proto stubs up to date"

# Ensure the default models exist: exported from the hub when reachable, otherwise clearly
# labelled random-init builds of the same architectures (the server logs and lists them as such).
models: venv
	@for entry in $(SERVED_MODELS); do \
	  IFS== read -r name hub family <<< "$$entry"; \
	  if $(BIN)/python -m export.ready $(MODELS_DIR)/$$name; then echo "$$name: exported and verified"; continue; fi; \
	  if $(BIN)/python -m export.hub_reachable $$hub; then \
	    $(BIN)/python -m export $$family $$hub --out $(MODELS_DIR)/$$name || exit 1; \
	  else \
	    echo "$$name: hub unreachable -> RANDOM-INIT build of $$hub (not pretrained)"; \
	    $(BIN)/python -m export $$family $$hub --random-init --seed 0 --out $(MODELS_DIR)/$$name || exit 1; \
	  fi; \
	done

run: models
	@echo "gRPC on $(ADDRESS); HTTP on http://$(HTTP_ADDRESS) (OpenAI base_url http://$(HTTP_ADDRESS)/v1, docs at /docs)"
	$(BIN)/embedder serve --address $(ADDRESS) --http-address $(HTTP_ADDRESS) --models-dir $(MODELS_DIR) --preload

test: venv proto-check lint
	$(BIN)/python -m pytest -q

# Format, lint and types (mypy strict on embedder/, as configured in pyproject.toml).
LINTED := embedder export tests bench tools
lint: venv
	$(BIN)/ruff format --check --quiet $(LINTED)
	$(BIN)/ruff check --quiet $(LINTED)
	$(BIN)/mypy

# The int8 variants measured beside their fp32 models; exported (or re-exported when an older
# quantisation scheme is found) like the models target: from the hub, else random-init with the
# same seed as the fp32 builds.
INT8_MODELS := clip-vit-base-patch32-int8=openai/clip-vit-base-patch32=clip dinov2-small-int8=facebook/dinov2-small=dinov2 \
	siglip2-base-patch16-224-int8=google/siglip2-base-patch16-224=siglip
bench: SIGLIP = 1
bench: models
	@for entry in $(INT8_MODELS); do \
	  IFS== read -r name hub family <<< "$$entry"; \
	  if $(BIN)/python -m bench.int8 $(MODELS_DIR)/$$name; then echo "$$name: exported and verified"; continue; fi; \
	  if $(BIN)/python -m export.hub_reachable $$hub; then \
	    $(BIN)/python -m export $$family $$hub --quantize int8 --out $(MODELS_DIR)/$$name || exit 1; \
	  else \
	    echo "$$name: hub unreachable -> RANDOM-INIT build of $$hub (not pretrained), int8"; \
	    $(BIN)/python -m export $$family $$hub --random-init --seed 0 --quantize int8 --out $(MODELS_DIR)/$$name || exit 1; \
	  fi; \
	done
	$(BIN)/python -m bench --models-dir $(MODELS_DIR)

# A random atheris campaign over the decode path (not part of `make test`): FUZZ_S seconds.
# Findings land in tests/hardening/fuzz_findings/, which `make test` replays.
FUZZ_S ?= 600
fuzz: venv
	$(BIN)/python tools/fuzz.py --seconds $(FUZZ_S)

clean:
	rm -rf $(VENV) build *.egg-info
