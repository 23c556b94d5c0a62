"""The import warm-up: the ML stack imported in the background right after the window shows."""

from __future__ import annotations

from ..process_switches import importing_the_ml_stack, preload_native_libraries


def warm_up_imports() -> None:
    """Import the ML stack (and pyqtgraph) in the background right after the window shows, so the first model
    opens fast and the first plot shows without a pause.

    Importing torch and transformers allocates millions of objects and leaves next to no cyclic garbage; no
    collection runs meanwhile, and afterwards they are frozen out of future collections
    (``importing_the_ml_stack``), so the GUI thread's collections (``GarbageCollector``) stay short.
    """
    with importing_the_ml_stack():
        # First: the plots are built on the GUI thread when a tab with plots is first shown (widgets/lazy_plot.py),
        # and would stall it for their import (about a second on a busy machine) were it not done here.
        import pyqtgraph  # noqa: F401  (numpy with it)

        preload_native_libraries()
        import datasets  # noqa: F401
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401  (lazy modules)

        import workbench.core.data.collators  # noqa: F401  (the package itself imports its modules lazily)
        import workbench.core.data.pipeline  # noqa: F401
        import workbench.core.models  # noqa: F401
        import workbench.core.runs  # noqa: F401
        import workbench.core.training  # noqa: F401
        # Imported by the first training run otherwise, each a GIL-holding pause of the window then (found by
        # listing sys.modules before and after a run that followed this warm-up).
        import datasets.io.generator  # noqa: F401
        import peft.utils.transformers_weight_conversion  # noqa: F401
        import torch.utils.serialization  # noqa: F401
