"""Where the Train tab's Start runs a training: in this app, or as a separate process on N local processes.

In this app the engine runs on a background thread of the window (``workers.TrainWorker``). As a separate
process the window starts ``workbench train`` (under PyTorch's launcher when N > 1: one process per GPU,
or per CPU share with gloo) and follows the run through its folder (``external_run.py``): such a run
survives the window and can use several GPUs.
"""

from __future__ import annotations

from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSpinBox, QWidget

IN_APP, SEPARATE = "In this app", "As a separate process"
MAX_PROCESSES = 256


class RunLocation(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.where = QComboBox()
        self.where.addItems([IN_APP, SEPARATE])
        self.where.setToolTip(
            "In this app: training runs inside the window, on one device.\n"
            "As a separate process: the window starts `workbench train` (with torchrun for more than one\n"
            "process) and watches its run folder. The run keeps going if the window closes, and one process\n"
            "per GPU trains data-parallel; on a CPU-only machine the processes share the cores (gloo).")
        self.processes = QSpinBox(minimum=1, maximum=MAX_PROCESSES, value=1)
        self.processes.setToolTip("Processes on this machine: one per GPU to use (torchrun --nproc_per_node).")
        self.processes_label = QLabel("on")
        self.unit_label = QLabel("GPUs / processes")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Run:"))
        layout.addWidget(self.where)
        for w in (self.processes_label, self.processes, self.unit_label):
            layout.addWidget(w)
        self.where.currentIndexChanged.connect(self._update)
        self._update()

    @property
    def separate(self) -> bool:
        return self.where.currentText() == SEPARATE

    @property
    def process_count(self) -> int:
        return self.processes.value()

    def set_separate(self, separate: bool, processes: int = 1) -> None:
        self.where.setCurrentText(SEPARATE if separate else IN_APP)
        self.processes.setValue(processes)

    def _update(self) -> None:
        for w in (self.processes_label, self.processes, self.unit_label):
            w.setVisible(self.separate)
