#!/bin/sh
# Smoke test of the frozen bundle (after packaging/build.sh / `make package`), in a throw-away home:
#   1. `lora-workbench --version` and `demo` (converts the built-in SmolLM2 shipped inside into the cache);
#   2. the window under Xvfb, the demo loaded (the window opens it at start), screenshot -> SHOT (default
#      dist/smoke/window.png) once the screen has stopped changing;
#   3. 2 training steps of the demo as a separate process of the frozen build (`lora-workbench demo --train`),
#      and the same through the bundle's own torchrun (`lora-workbench torchrun … --no-python lora-workbench …`),
#      the path the window takes for more than one process;
#   4. each run folder: finished, 2 steps in metrics.jsonl, the adapter (PEFT files, model card, curves).
# Needs xvfb-run and xwininfo (apt-get install xvfb x11-utils); the screenshot uses Pillow from PYTHON.
set -eu
cd "$(dirname "$0")/.."
APP=${APP:-$PWD/dist/lora-workbench/lora-workbench}
PYTHON=${PYTHON:-.venv/bin/python}
OUTDIR=${OUTDIR:-$PWD/dist/smoke}
SHOT=${SHOT:-$OUTDIR/window.png}
case $PYTHON in /*) ;; */*) PYTHON=$PWD/$PYTHON;; esac
[ -x "$APP" ] || { echo "no bundle at $APP: run packaging/build.sh (make package) first" >&2; exit 1; }
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/home"
export HOME="$OUTDIR/home" XDG_CONFIG_HOME="$OUTDIR/home/.config" XDG_DATA_HOME="$OUTDIR/home/.local/share"
export LORA_WORKBENCH_CACHE="$OUTDIR/cache" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$OUTDIR"
fail() { echo "SMOKE FAILED: $*" >&2; exit 1; }

echo "== version and the built-in model"
"$APP" --version | grep -q "^workbench " || fail "--version"
"$APP" demo > demo.txt || fail "workbench demo: $(cat demo.txt)"
grep -q "_internal/workbench/resources/examples/demo.toml" demo.txt || fail "demo run file not from the bundle"
cat demo.txt | head -4

echo "== the window with the demo, under Xvfb"
cat > window.sh <<'WINDOW'
#!/bin/sh
"$APP" > window.log 2>&1 &
app=$!
i=0
until xwininfo -root -tree 2>/dev/null | grep -q "LoRA Workbench"; do
  i=$((i + 1)); [ $i -lt 120 ] || { kill $app; echo "no window after 120 s" >&2; exit 1; }
  kill -0 $app 2>/dev/null || { echo "the app exited" >&2; cat window.log >&2; exit 1; }
  sleep 1
done
# The demo's model opens in a worker after the window shows: shoot once two screenshots 3 s apart are equal.
"$PYTHON" - "$SHOT" <<'PY'
import sys, time
from PIL import ImageChops, ImageGrab
last, start = None, time.monotonic()
while True:
    time.sleep(3)
    shot = ImageGrab.grab(xdisplay=None)
    if last is not None and ImageChops.difference(shot, last).getbbox() is None and time.monotonic() - start > 15:
        break
    if time.monotonic() - start > 180:
        break
    last = shot
shot.save(sys.argv[1])
print("screenshot", sys.argv[1], shot.size)
PY
code=$?
kill $app; wait $app 2>/dev/null || true
exit $code
WINDOW
export APP SHOT PYTHON
xvfb-run -a -s "-screen 0 1600x1000x24" sh window.sh || fail "window (see $OUTDIR/window.log)"
grep -qi "traceback" window.log && fail "a traceback in the window's output: $OUTDIR/window.log"

check_run() {  # RUN_DIR
  [ "$("$APP" runs --status "$1")" = finished ] || fail "$1 did not finish"
  [ "$(grep -c '"kind":"step"' "$1/metrics.jsonl")" = 2 ] || fail "$1: not 2 steps"
  for f in adapter_config.json adapter_model.safetensors README.md training_curves.png; do
    [ -s "$1/adapter/$f" ] || fail "$1/adapter/$f missing"
  done
  grep -q "library_name: peft" "$1/adapter/README.md" || fail "$1: no model card metadata"
  echo "ok: $1 ($(du -sh "$1/adapter" | cut -f1) adapter)"
}

echo "== 2 training steps as a separate process of the frozen build"
"$APP" demo --train --set training.max_steps=2 --set training.eval_steps=2 --run-dir "$OUTDIR/run" --quiet \
  > train.log 2>&1 || fail "training: $(tail -20 train.log)"
check_run "$OUTDIR/run"

echo "== the same through the bundle's torchrun (one worker: the bundle again)"
"$APP" torchrun --standalone --nproc_per_node=1 --no-python "$APP" demo --train --set training.max_steps=2 \
  --set training.eval_steps=2 --run-dir "$OUTDIR/run-torchrun" --quiet > torchrun.log 2>&1 \
  || fail "torchrun: $(tail -20 torchrun.log)"
check_run "$OUTDIR/run-torchrun"
echo "SMOKE PASSED (screenshot: $SHOT)"
