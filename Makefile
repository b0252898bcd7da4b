# `make demo` and `make test` each create or reuse .venv and install what is missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The torch build to install first (override on a cluster, e.g. TORCH_SPEC="torch torchvision").
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo compare test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Train the toy2d experiment on the CPU, compare EM-1000 / DDIM-50 / dopri5 during fit, log offline to W&B.
demo: $(STAMP)
	$(PY) -m lightning_sde.train experiment=toy2d

# Compare the samplers on the exact 8-Gaussians oracle (no training).
compare: $(STAMP)
	$(PY) -m lightning_sde.cli.compare

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/sampler_accuracy.py
	$(PY) benchmarks/training_throughput.py

clean:
	rm -rf $(VENV) outputs multirun
