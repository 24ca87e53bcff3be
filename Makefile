# toylab: `make superposition`, `make grokking`, `make induction` and `make test` set
# themselves up on a fresh clone.
# Everything runs inside .venv, installed from requirements.lock (exact versions).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
ARGS   ?=

.PHONY: setup superposition grokking induction test bench smoke clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@rm -f $(VENV)/.installed-*
	@touch $@

# The paper preset: trains into runs/superposition/, refreshes figures/superposition/,
# prints the checks against the paper. Extra flags: make superposition ARGS="--n-steps 5000"
superposition: $(STAMP)
	$(PY) -m experiments.superposition all --preset paper --out runs/superposition \
		--figures figures/superposition $(ARGS)

# The paper preset (40,000 epochs, ~25 min on 2 CPU cores): checkpoints every 100
# epochs in runs/grokking/, figures refreshed in figures/grokking/, checks printed.
grokking: $(STAMP)
	$(PY) -m experiments.grokking all --preset paper --out runs/grokking --figures figures/grokking $(ARGS)

# The paper preset: 2-layer attention-only models (4 seeds) and 1-layer controls, into
# runs/induction/, figures refreshed in figures/induction/. The bigram-data variant:
# make induction ARGS="--preset markov --out runs/induction-markov --figures figures/induction-markov"
induction: $(STAMP)
	$(PY) -m experiments.induction all --preset paper --out runs/induction --figures figures/induction $(ARGS)

smoke: $(STAMP)
	$(PY) -m experiments.superposition all --preset smoke --out runs/smoke/superposition
	$(PY) -m experiments.grokking all --preset smoke --out runs/smoke/grokking
	$(PY) -m experiments.induction all --preset smoke --out runs/smoke/induction

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf runs .pytest_cache
