# Two commands do all the set-up on a fresh clone:
#   make demo   the whole offline audit on the built-in captions and photos -> runs/demo/report.html
#   make test   the test suite (offline, CPU)
# Both create .venv and install the package with the extras they need the first time.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[offline,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aesthetic-audit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
