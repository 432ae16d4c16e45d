# The README's two commands are `make demo` and `make test`; both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DATA   := data/digits
RUN    := runs/demo

.PHONY: install demo compare test test-fast lint format bench clean

# pip on the project's machines installs torch 2.14.1 + torchvision 0.29.1 from local disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v 'is ignored: it is neither' || true
	$(BIN)/python -c "import torch, torchvision, timm, prefect, webdataset; assert torch.__version__.startswith('2.14.1'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

$(DATA)/dataset.json: | $(STAMP)
	$(BIN)/selftrain data digits --out $(DATA)

## Main job on the bundled digits data: Noisy Student, teacher + 3 student iterations, then the report.
## Re-running continues the same run (finished stages are never redone).
demo: $(STAMP) $(DATA)/dataset.json
	$(BIN)/selftrain run noisy-student --data $(DATA) --run-dir $(RUN) --config configs/digits.yaml --iterations 3
	$(BIN)/selftrain report --run-dir $(RUN)

## Supervised vs Noisy Student vs Meta Pseudo Labels on digits (runs `demo` first if needed).
compare: demo
	$(BIN)/selftrain run meta-pseudo-labels --data $(DATA) --run-dir runs/mpl --config configs/digits.yaml
	$(BIN)/selftrain compare --noisy-student $(RUN) --mpl runs/mpl

## Every test that can run on this machine: unit, integration and slow (GPU tests skip themselves).
## One pytest-xdist worker per core, at most 4 (each starts its own Prefect test server); a file's
## tests stay on one worker, so its module fixtures (servers, trained runs) are built once.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
test: $(STAMP)
	$(BIN)/pytest -m "" -q -n $(WORKERS) --dist loadfile --durations=25

## Unit tests only (the pytest default).
test-fast: $(STAMP)
	$(BIN)/pytest -q -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/pseudolabel.py
	$(BIN)/python benchmarks/train_student.py
	$(BIN)/python benchmarks/stored_size.py

clean:
	rm -rf $(RUN) runs/mpl .pytest_cache .ruff_cache
