# toylab: `make superposition`, `make grokking`, `make induction`, `make sae` and `make test` set
# themselves up on a fresh clone.
# Everything runs inside .venv, installed from requirements.lock (exact versions).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
ARGS   ?=

EXPERIMENTS := superposition grokking induction sae

.PHONY: setup $(EXPERIMENTS) grokking-phases exercises test bench smoke clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock
	@# bytecode on every core (pip compiles on one): setup about 8 s faster on 2 cores; a file that
	@# does not compile only goes without cached bytecode, so failures are not errors
	@$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1 || true
	@rm -f $(VENV)/.installed-*
	@touch $@

# `make NAME` runs experiment NAME's paper preset: trains into runs/NAME/ (resuming if
# interrupted), refreshes figures/NAME/, prints the checks against the paper. Extra flags:
# make grokking ARGS="--n-steps 5000"; another preset into another folder:
# make induction ARGS="--preset markov --out runs/induction-markov --figures figures/induction-markov"
# Paper-preset wall times on 2 CPU cores: superposition ~3 min, grokking ~30 min (44 on a slow day),
# induction 3.5 to 6 min, sae 7 to 11 min.
$(EXPERIMENTS): %: $(STAMP)
	$(PY) -m experiments.$* all --preset paper --out runs/$* --figures figures/$* $(ARGS)

# The grokking phase diagram: weight decay x training fraction x 2 seeds, 84 models in one compiled
# program (about 12 min on 2 CPU cores). The paper-scale grid, for a GPU or a cluster:
# make grokking-phases PHASES=phases-paper
PHASES ?= phases
grokking-phases: $(STAMP)
	$(PY) -m experiments.grokking all --preset $(PHASES) --out runs/grokking-$(PHASES) --figures figures/grokking-$(PHASES) $(ARGS)

# Every experiment's smoke preset, seconds each: every stage runs, nothing matches the paper.
smoke: $(STAMP)
	@for e in $(EXPERIMENTS); do $(PY) -m experiments.$$e all --preset smoke --out runs/smoke/$$e || exit 1; done

# Predict, then run: every guide's exercises (or one: make exercises NAME=grokking-more-data), each
# followed by its check of the prediction, and a table of outcomes at the end. All of them: about 35 min.
exercises: $(STAMP)
	$(PY) -m experiments.exercises $(NAME)

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m experiments.bench

clean:
	rm -rf runs .pytest_cache
