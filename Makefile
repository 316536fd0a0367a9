# The two commands: `make demo` and `make test`. Both bootstrap .venv first (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_CLUSTER := torch-cluster==1.6.3
export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE ?= 1
# DeepSpeed ships as an sdist: build no C++/CUDA ops at install (they JIT-compile when first used).
export DS_BUILD_OPS ?= 0

.PHONY: demo test test-fast bootstrap slurm

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/pip install -e ".[test]"
	# Node2Vec's random walks: torch-cluster is source-only on PyPI and must build against the installed
	# torch (no build isolation). First build ~15-25 min on 2 cores; pip caches the wheel afterwards.
	$(BIN)/python -c "import torch_cluster" 2>/dev/null || $(BIN)/pip install --no-build-isolation "$(TORCH_CLUSTER)"
	# DeepSpeed's CPU communication op, compiled here once (~1 min) instead of in the first fine-tuning run.
	$(BIN)/python -c "from newsrec_dist.encoder.distributed import build_cpu_ops; build_cpu_ops()"
	touch $(STAMP)

bootstrap: $(STAMP)

# The submission tests start a real single-node Slurm (tests/local_clusters.py): Debian's slurm-wlm + munge.
slurm:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
	  echo "error: Slurm is missing and installing it needs root: apt-get install slurm-wlm munge"; exit 1; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq slurm-wlm munge >/dev/null

demo: $(STAMP)
	$(BIN)/newsrec run experiment=quickstart

# One run, two tests at a time (pytest-xdist; modules with their own services stay on one worker), the longest
# first and fail-fast (tests/conftest.py): two tiers one after the other idled a core at each tier's end and built
# the session fixtures twice. pytest exits 5 when it collects no tests, so an empty run fails loudly.
# `make test-fast` runs the fast tests alone (a few minutes). --durations feeds docs/testing.md's table.
PYTEST := $(BIN)/python -m pytest tests -n 2 --dist loadgroup --durations=30 -x
test: $(STAMP) slurm
	$(PYTEST)

test-fast: $(STAMP) slurm
	$(PYTEST) -m "not slow"
