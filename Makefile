# Every target creates .venv when missing and installs the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The install script may pin torch; the package metadata does not.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench clean

$(BIN)/selfsup: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[test,viz,safetensors]"
	touch $(BIN)/selfsup

install: $(BIN)/selfsup

demo: install
	$(BIN)/selfsup demo --out runs/demo --overwrite

test: install
	$(BIN)/python -m pytest tests -q

bench: install
	$(BIN)/python benchmarks/pretrain_cifar10.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
