"""llama.cpp's quantizer (``llama_model_quantize`` in llama-cpp-python's shared library), run in a child process.

A child process, not a thread, because the quantizer is one C call: it cannot be asked to stop half-way (the
child can be killed, and the partial output is then removed with the rest of the temporary folder), and a
failed assertion inside ggml aborts the whole process, which must not be the window's. llama.cpp reports one
line per tensor (``[  12/ 272] blk.0.attn_q.weight … converting to q4_K``) on stderr; the parent turns those
into ``Progress`` events.

Run as ``python -m workbench.core.gguf_export.quantize INPUT OUTPUT FILE_TYPE``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from workbench.core.control import Control
from workbench.core.errors import WorkbenchError
from workbench.core.events import Progress, Sink
from workbench.core.selfcmd import module_command

__all__ = ["quantize_with_llama_cpp"]

_TENSOR_LINE = re.compile(rb"\[\s*(\d+)\s*/\s*(\d+)\]")


def quantize_with_llama_cpp(source: Path, target: Path, file_type: int, *, sink: Sink, control: Control,
                            label: str) -> None:
    """Quantize the GGUF ``source`` into ``target`` (``general.file_type`` = ``file_type``). Raises ``_Stopped``
    (from the writer) when ``control`` asks to stop, ``WorkbenchError`` with llama.cpp's last words if it fails."""
    from .writer import Stopped

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1))))
    cmd = module_command("workbench.core.gguf_export.quantize", str(source), str(target), str(file_type))
    tail: deque[bytes] = deque(maxlen=12)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    try:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, b""):
            tail.append(line.rstrip())
            match = _TENSOR_LINE.search(line)
            if match:
                done, total = int(match[1]), int(match[2])
                name = line[match.end():].split(b" - ")[0].strip().decode("utf-8", "replace")
                sink.emit(Progress("quantize", done, total, unit="tensors", detail=f"{label}: {name}"))
            if control.stop_requested:
                raise Stopped
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0 or not target.is_file():
        said = "\n  ".join(t.decode("utf-8", "replace") for t in tail if t.strip()) or f"exit status {code}"
        raise WorkbenchError(f"llama.cpp could not quantize the model to {label}:\n  {said}",
                             "try another type (q8_0 needs no llama.cpp), or report the message above")


def _main(argv: list[str]) -> int:
    import llama_cpp

    source, target, file_type = argv[0], argv[1], int(argv[2])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = file_type
    params.nthread = int(os.environ.get("OMP_NUM_THREADS") or 0)
    return int(llama_cpp.llama_model_quantize(source.encode(), target.encode(), params))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
