# The two commands a new user needs (see README): `make demo` and `make test`.
# Both create .venv with the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo demo_scratch ablation learning_curve test test-fast lint clean

$(STAMP): requirements.txt requirements-test.txt requirements-nodeps.txt setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The main job (bsft_jax/mainjob.py): BehaviorSFT and GeneralSFT fine-tunes of the real SmolLM2-135M-Instruct
# on demo v2, then the evaluator's four arms (few-shot k=3 and explicit-instruction prompting of the base
# model, GeneralSFT, BehaviorSFT) and the steering probe in one report. Rerunning skips finished stages.
DEMO_REPORT ?= runs/demo_report
# `make demo SMOKE=1`: every stage on a tiny budget (~5 min), in runs/*_smoke folders.
demo: $(STAMP)
	$(BIN)/python -m bsft_jax.mainjob --out_dir $(DEMO_REPORT) $(if $(SMOKE),--smoke,)

# The learning curve of the make-demo recipe (hours on 2 cores): bench/learning_curve.{json,png}.
learning_curve: $(STAMP)
	$(BIN)/python -m bench.learning_curve

# The from-scratch 1.1M-parameter demo of earlier versions (no prompting baselines: no pretrained model).
demo_scratch: $(STAMP)
	$(BIN)/python -m bsft_jax.train --config configs/demo_scratch.py
	$(BIN)/python -m bsft_jax.train --config configs/demo_scratch_generalsft.py
	$(BIN)/python -m bsft_jax.evaluate --config configs/demo_scratch.py --checkpoint runs/demo_scratch \
	  --general_checkpoint runs/demo_scratch_generalsft --baselines= --out_dir runs/demo_scratch_report

# The seeded ablation (hours on 2 cores): seeds x schemes x {GeneralSFT, BehaviorSFT}, bootstrap CIs.
ablation: $(STAMP)
	$(BIN)/python -m bench.ablation

# pytest's exit code 5 (nothing collected) counts as a failure: an empty run tested nothing.
# TEST_WORKERS pytest-xdist processes run the tests (a file, or a folder sharing a costly session fixture,
# stays on one: tests/conftest.py); `make test TEST_WORKERS=0` runs them in one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# `make test`: every test (what CI runs), the 15 slowest named at the end so a slow newcomer shows.
test: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) tests --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# `make test-fast`: the in-process tier, the daily loop. Not the tests under tests/integration,
# tests/multihost and tests/realweights (marked slow by their folder: tests/tiers.py).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(PYTEST) tests -m "not slow" --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
