# `make demo` and `make test` each create or reuse .venv and install what is missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The torch build to install first (override on a cluster, e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist workers: an integration test mostly waits on one single-threaded subprocess (imports, SLURM), so two
# keep both cores busy (measured: 39 -> 26 min); a test file stays on one worker (its module fixtures, e.g. the SLURM
# cluster, start once), and the longest files start first (tests/conftest.py: LONGEST_FIRST). TEST_WORKERS=0: one
# process, e.g. `make test TEST_WORKERS=0 PYTEST_ARGS="-k slurm"`.
TEST_WORKERS ?= 2

.PHONY: demo compare test lint mutation bench clean slurm-deps

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Train the toy2d experiment on the CPU, compare EM-1000 / DDIM-50 / dopri5 during fit, log offline to W&B.
demo: $(STAMP)
	$(VENV)/bin/lsde-train experiment=toy2d

# Compare the samplers on the exact 8-Gaussians oracle (no training).
compare: $(STAMP)
	$(PY) -m lightning_sde.cli.compare

# The linter first (seconds), then every test: tests/unit (math against the truth) and tests/integration (real
# processes: the apps, DDP, SLURM, offline W&B, the installed wheel); the log lists the 25 slowest tests.
test: $(STAMP) slurm-deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Mutation testing of the math and bookkeeping modules (config: [tool.mutmut] in pyproject.toml; about an hour on
# 2 cores). One thread per process: mutmut forks, and OpenMP thread pools do not survive a fork.
mutation: $(STAMP)
	$(PY) -m pip install -q "mutmut>=3.3"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

# tests/integration/test_slurm.py starts a real single-node SLURM: Debian's slurm-wlm and munge, installed here when missing
# (as root with apt-get; otherwise those tests skip, saying why).
slurm-deps:
	@if ! command -v slurmctld >/dev/null 2>&1 && [ ! -x /usr/sbin/slurmctld ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing slurm-wlm and munge (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	  else echo "slurm-wlm/munge missing and not root with apt-get: tests/integration/test_slurm.py will skip"; fi; \
	fi

bench: $(STAMP)
	$(PY) benchmarks/sampler_accuracy.py
	$(PY) benchmarks/training_throughput.py

clean:
	rm -rf $(VENV) outputs multirun
