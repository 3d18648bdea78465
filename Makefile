# Two commands do all the set-up on a fresh clone:
#   make demo   the whole offline audit on the built-in captions and photos -> runs/demo/report.html
#   make test   the test suite (offline, CPU)
# Both create .venv and install the package with the extras they need the first time.

PYTHON ?= python3
# torch is installed first so pip keeps this build; the CPU wheel by default. On a GPU machine pick
# the build you want, e.g. `make test TORCH=torch` (pip's default CUDA build on Linux).
TORCH  ?= torch==2.13.0
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[offline,models,app,ray,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aesthetic-audit demo
	@echo "The command line is $(BIN)/aesthetic-audit; run '. $(BIN)/activate' to put aesthetic-audit on PATH."

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
