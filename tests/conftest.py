import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch/OpenMP thread per process, for this process and every `workbench` process a test starts (they inherit
# the environment). The tiny models are far too small for a second thread to help, and on a 2-core machine the
# suite often runs two processes at once (a window test and the run it starts, torchrun's two ranks): two OpenMP
# threads each then spin-wait for a descheduled partner. Measured in bench/suite_threads.py (docs/benchmarks.md).
# Set OMP_NUM_THREADS yourself to run the suite with more.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # a plugin imported it before this file: the variable was read already
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# A model's own code (trust_remote_code tests) is copied by transformers into its modules cache, read once at
# import: point it away from the user's ~/.cache for the whole session.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="workbench-test-hf-modules-"))
sys.path.insert(0, str(Path(__file__).parent))


# Full garbage collections walk every object the process holds, and a test session holds the whole ML stack once
# a test has imported it (about 600,000 objects): in tests/core/test_training.py, 30 full collections took 27 s of
# 137 s. Before a test, when at least FREEZE_AFTER_MODULES modules were imported since the last time, the garbage
# is collected once and what is left alive (modules, classes, session fixtures) is frozen out of later collections
# (gc.freeze), as the window does after its own import of the ML stack (gui/process_switches.py). A test's own
# garbage is collected as before. WORKBENCH_TEST_GC_FREEZE=0 turns it off (bench/suite_threads.py --gc compares).
FREEZE_AFTER_MODULES = 200
_modules_at_freeze = [0]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if os.environ.get("WORKBENCH_TEST_GC_FREEZE", "1") == "0":
        return
    if len(sys.modules) - _modules_at_freeze[0] >= FREEZE_AFTER_MODULES:
        import gc

        gc.collect()
        gc.freeze()
        _modules_at_freeze[0] = len(sys.modules)


def pytest_collection_modifyitems(items):
    """The fast tier (`make test-fast`: -m "not slow") leaves out every test that starts a process or loads the real
    model; a test that asks for the smollm2 fixture loads it whether or not its author marked it."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.real_model)
        if item.get_closest_marker("subprocess") or item.get_closest_marker("real_model"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: tiny_model_dir("llama") → a saved local HF folder, built once per architecture per session."""
    import tiny

    cache: dict = {}

    def get(arch: str = "llama", **kw) -> Path:
        key = (arch, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tiny.save_model(arch, tmp_path_factory.mktemp(f"model-{arch}"), **kw)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The built-in SmolLM2 model, converted once per test session into a session-private cache."""
    from workbench.core import builtin

    return builtin.ensure_builtin(cache_dir=tmp_path_factory.getbasetemp() / "workbench-cache")
