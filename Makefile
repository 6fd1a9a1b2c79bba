# Every target creates .venv when missing and installs the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The install script may pin torch; the package metadata does not.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint bench clean

$(BIN)/selfsup: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[test,lint,viz,safetensors]"
	touch $(BIN)/selfsup

install: $(BIN)/selfsup

demo: install
	$(BIN)/selfsup demo --out runs/demo --overwrite

# The tests (one pytest-xdist worker per core), then the linters (ruff: pyflakes, import order, module
# docstrings; mypy: types), so both stay clean.
test: install
	$(BIN)/python -m pytest tests -q -n auto
	$(MAKE) --no-print-directory lint

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: install
	$(BIN)/python benchmarks/pretrain_cifar10.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
