"""Export launch script…: the run designed in the window, as a script that trains it on K nodes × N GPUs.

The same renderer as ``workbench launch-script`` (``core.launch.render_script``). The window's current
configuration is saved as a run file next to the script (``train.sh`` → ``train.toml``), with local paths
made absolute so that the nodes find the model and the data wherever the script is started from; both
files are written atomically. The run folder is fixed in the script (``--run-dir``), so the window can
watch the run live from the Runs tab and stop it through the folder, once all nodes see the same disk.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QLabel, QLineEdit, QSpinBox, QVBoxLayout,
)

from workbench.core.config import RunConfig
from workbench.core.errors import WorkbenchError
from workbench.core.launch import portable_config
from workbench.core.runs import model_short_name, planned_run_dir

from .export_dialog import _path_row


def default_run_dir(config: RunConfig, base: Path | None = None) -> Path:
    """Where a launched run writes: ``output.run_dir``, else ``runs_root/<name or model-time>`` — the folder the
    engine and ``workbench launch-script`` choose for the same run file (``core.runs.planned_run_dir``)."""
    return planned_run_dir(config, base)


def run_file_for(script: Path) -> Path:
    return script.with_suffix(".toml") if script.suffix != ".toml" else script.with_name(script.name + ".run.toml")


class LaunchScriptDialog(QDialog):
    written = Signal(str)  # the script's path
    failed = Signal(str)

    def __init__(self, config: RunConfig, run_file_hint: Path | None = None, processes: int = 1, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Export launch script")
        self.setMinimumWidth(640)
        self.config = config
        folder = (run_file_hint.parent if run_file_hint else Path.cwd()).absolute()
        name = config.output.name or model_short_name(config.model.source)

        self.nodes = QSpinBox(minimum=1, maximum=4096, value=1)
        self.nodes.setToolTip("Machines (Slurm --nodes); one torchrun per machine.")
        self.gpus = QSpinBox(minimum=1, maximum=64, value=max(processes, 1))
        self.gpus.setToolTip("GPUs per machine: torchrun starts one process per GPU.")
        self.scheduler = QComboBox()
        self.scheduler.addItem("Slurm (sbatch script)", "slurm")
        self.scheduler.addItem("Plain (start on every node with NODE_RANK and MASTER_ADDR)", "plain")
        self.script_edit = QLineEdit(str(folder / f"{name}-launch.sh"))
        self.run_dir_edit = QLineEdit(str(default_run_dir(config)))
        self.run_dir_edit.setToolTip("The run folder, on storage every node sees (only rank 0 writes it).")
        self.python_edit = QLineEdit(sys.executable)
        self.python_edit.setToolTip("The Python interpreter (with Workbench installed) on the nodes.")
        self.partition_edit = QLineEdit()
        self.partition_edit.setPlaceholderText("optional")
        self.time_edit = QLineEdit()
        self.time_edit.setPlaceholderText("optional, e.g. 24:00:00")
        self.world_label = QLabel()
        self.result = QLabel()
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        form = QFormLayout()
        form.addRow("Nodes", self.nodes)
        form.addRow("GPUs per node", self.gpus)
        form.addRow("", self.world_label)
        form.addRow("Scheduler", self.scheduler)
        form.addRow("Script", _path_row(self.script_edit, self._choose_script))
        form.addRow("Run folder", self.run_dir_edit)
        form.addRow("Python on the nodes", self.python_edit)
        form.addRow("Slurm partition", self.partition_edit)
        form.addRow("Slurm time limit", self.time_edit)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.write_button = self.buttons.addButton("Write script", QDialogButtonBox.ButtonRole.ActionRole)
        self.write_button.clicked.connect(self.write)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.result)
        layout.addWidget(self.buttons)
        for spin in (self.nodes, self.gpus):
            spin.valueChanged.connect(self._update)
        self.scheduler.currentIndexChanged.connect(self._update)
        self._update()

    def _update(self) -> None:
        world = self.nodes.value() * self.gpus.value()
        self.world_label.setText(f"world size {world} process{'es' if world > 1 else ''}; global batch "
                                 f"{self.config.training.batch_size} × {world} × {self.config.training.gradient_accumulation}"
                                 f" = {self.config.training.batch_size * world * self.config.training.gradient_accumulation}")
        slurm = self.scheduler.currentData() == "slurm"
        self.partition_edit.setEnabled(slurm)
        self.time_edit.setEnabled(slurm)

    def _choose_script(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Launch script", self.script_edit.text(), "Shell scripts (*.sh);;All files (*)")
        if path:
            self.script_edit.setText(path)

    def write(self) -> Path | None:
        """Save the run file and the script; say where they went (or why not)."""
        from workbench.core.fsutil import atomic_write_text
        from workbench.core.launch import LaunchPlan, render_script

        script = Path(self.script_edit.text().strip()).expanduser().absolute()
        run_dir = Path(self.run_dir_edit.text().strip()).expanduser().absolute()
        run_file = run_file_for(script)
        try:
            if not self.script_edit.text().strip() or not self.run_dir_edit.text().strip():
                raise WorkbenchError("choose where to write the script and the run folder")
            plan = LaunchPlan(run_file=run_file, run_dir=run_dir, nodes=self.nodes.value(),
                              gpus_per_node=self.gpus.value(), scheduler=self.scheduler.currentData(),
                              python=self.python_edit.text().strip() or sys.executable,
                              job_name=run_dir.name, time_limit=self.time_edit.text().strip() or None,
                              partition=self.partition_edit.text().strip() or None)
            text = render_script(plan)
            script.parent.mkdir(parents=True, exist_ok=True)
            portable_config(self.config).save(run_file)
            atomic_write_text(script, text)
            script.chmod(0o755)
        except WorkbenchError as exc:
            return self._fail(exc.message + (f" ({exc.hint})" if exc.hint else ""))
        except OSError as exc:
            return self._fail(f"cannot write {exc.filename or script}: {exc.strerror or exc}")
        submit = f"sbatch {script}" if plan.scheduler == "slurm" else f"NODE_RANK=i MASTER_ADDR=node0 bash {script} on each node"
        e = html.escape
        self.result.setText(f"Wrote <b>{e(str(script))}</b> (world size {plan.world_size}) and the run file "
                            f"{e(str(run_file))}.<br>Submit with: <code>{e(submit)}</code><br>The run writes to "
                            f"{e(str(run_dir))}; watch it in the Runs tab (with its runs folder as the runs root) "
                            "and stop it there.")
        self.written.emit(str(script))
        return script

    def _fail(self, message: str) -> None:
        self.result.setText(f"<span style='color:#c83232'>Not written: {html.escape(message)}</span>")
        self.failed.emit(message)
        return None
