# The two commands a new user needs (see README): `make demo` and `make test`.
# Both create .venv with the pinned requirements on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): requirements.txt requirements-test.txt requirements-nodeps.txt setup.py
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-test.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded demo data: BehaviorSFT and its GeneralSFT counterpart (same data, no
# behavior tokens), then the evaluator's comparison table on the demo test split. Rerunning resumes
# from the runs' checkpoints. (The prompting baselines need a pretrained base model: the demo has none.)
DEMO_REPORT ?= runs/demo_report
demo: $(STAMP)
	$(BIN)/python -m bsft_jax.train --config configs/demo.py
	$(BIN)/python -m bsft_jax.train --config configs/demo_generalsft.py
	$(BIN)/python -m bsft_jax.evaluate --config configs/demo.py --checkpoint runs/demo \
	  --general_checkpoint runs/demo_generalsft --baselines= --out_dir $(DEMO_REPORT)
	@echo "Report: $(DEMO_REPORT)/report.md (radar.png, report.json, predictions_*.jsonl beside it)"

# pytest's exit code 5 (nothing collected) counts as a failure: an empty run tested nothing.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
