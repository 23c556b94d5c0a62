"""The Trainer subclass the engine trains with. Imports transformers: the engine imports this module only when a
run starts (``engine.train_once``), so that ``import workbench.core.training`` stays quick.

Private Trainer API used here (each has a test in tests/core/test_compat_training.py): ``Trainer._save_checkpoint``
and ``Trainer._get_output_dir``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..fsutil import TMP_PREFIX, fsync_dir, publish_directory, remove_directory
from ..runs import checkpoint_folders


class AtomicCheckpointTrainer(Trainer):
    """The HF Trainer with atomic checkpoints.

    The Trainer writes ``checkpoint-N`` file by file in place, so a killed or power-cut save leaves a
    half-written folder under the final name. Here each save goes to ``checkpoints/.tmp-checkpoint-N.partial/``
    instead: the Trainer's own ``_save_checkpoint`` runs unchanged with its output folder pointed there (through
    ``_get_output_dir``, which it asks for the folder to save into — narrower than changing ``args.output_dir``,
    which callbacks and the end of training read too), every rank writes its files, then the main process
    flushes the folder to disk and renames it to ``checkpoints/checkpoint-N``, and syncs ``checkpoints/``.
    Rotation (``save_total_limit``) runs after the rename, on the real folder, and deletes an old checkpoint by
    renaming it to ``.tmp-checkpoint-N.deleting`` first, so a killed rotation leaves no half-deleted folder
    under a checkpoint name either. ``on_save`` (the ``CheckpointSaved`` event) follows ``_save_checkpoint``
    in the Trainer, so it always names the published folder.
    """

    _staging: str | None = None
    label_set: Any = None  # a classification run's classification.LabelSet, written into each checkpoint
    _loss_head: Any = None  # core/loss.chunked_loss_head of the model, or False: found at the first step

    # -- the loss and what it was computed on (core/loss.py) ----------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from ..loss import HeadlessCausalLM, LossCounts, chunked_loss_head

        if model.training and not return_outputs:  # a training step (evaluation asks for the outputs)
            if not hasattr(self, "loss_counts"):
                self.loss_counts = LossCounts()
            self.loss_counts.add(inputs)
            if self._loss_head is None:
                self._loss_head = chunked_loss_head(self.model) or False
            if self._loss_head and "labels" in inputs and self.label_smoother is None and self.compute_loss_func is None:
                # The loss on supervised positions only, without the [batch, seq, vocab] logits; the
                # Trainer's own scaling (accumulation, token averaging across processes) applies unchanged.
                model = HeadlessCausalLM(model, *self._loss_head)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and hasattr(self, "loss_counts"):  # every process logs the same step: sum over them
            tokens, examples = self.loss_counts.take(self.accelerator.reduce, self.accelerator.device)
            logs = {**logs, "trained_tokens": tokens, "trained_examples": examples}
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        """The Trainer's save, without TRL's frozen ``ref`` adapter (preference runs, core/init_adapter.py).

        PEFT saves every adapter of a model, so a checkpoint held ``ref/`` — a second copy of the adapter's size —
        beside the trained one. A resume does not need it: TRL makes ``ref`` when the trainer is built, by copying
        the starting adapter, and the resumed run builds its starting adapter as the first run did (a fresh adapter
        from the seed, or ``model.init_adapter`` again) before the checkpoint's ``default`` is loaded over it
        (tests/core/test_preference.py: the resumed curve equals the uninterrupted one)."""
        model = self.model
        if "ref" not in getattr(model, "peft_config", {}):
            return super()._save(output_dir, state_dict)
        save_pretrained = model.save_pretrained
        model.save_pretrained = lambda *a, **kw: save_pretrained(*a, **{**kw, "selected_adapters": ["default"]})
        try:
            return super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained  # the instance attribute: the class's method shows again

    def _get_output_dir(self, trial):
        return self._staging if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        root = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = root / f"{TMP_PREFIX}{name}.partial"
        main = self.args.should_save
        if main and staging.exists():
            shutil.rmtree(staging)  # left by a save that was interrupted earlier
        self.accelerator.wait_for_everyone()  # no rank writes into the staging folder before it is clean
        self._staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # its rotation sees only this checkpoint: a no-op
            self.accelerator.wait_for_everyone()  # every rank has written its files (RNG state per rank)
            if main:
                if self.label_set is not None:  # labels.json beside the checkpoint's adapter, as in adapter/
                    from ..classification import write_label_file

                    # (into the folder before it is published, so no checkpoint is ever seen without it)
                    write_label_file(staging / name if (staging / name).is_dir() else root / name, self.label_set)
                self._publish(staging / name, root / name, staging)
                self._rotate(root)
        except BaseException:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # the checkpoint is in place for every rank

    def _publish(self, written: Path, final: Path, staging: Path) -> None:
        if not written.is_dir():
            if final.is_dir():  # a transformers version that no longer asks _get_output_dir: saved in place
                warnings.warn(f"{final} was written in place, not atomically (transformers changed its saving)",
                              stacklevel=2)
                return
            raise RuntimeError(f"the Trainer wrote no checkpoint into {staging}")
        # Overwrite: a checkpoint of the same step can only be one a resume has passed over (damaged).
        publish_directory(written, final, overwrite=True)
        staging.rmdir()
        fsync_dir(final.parent)
        best = self.state.best_model_checkpoint  # recorded while the checkpoint was still in staging
        if best and Path(best) == written:
            self.state.best_model_checkpoint = str(final)

    def _rotate(self, root: Path) -> None:
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        # The same folders as every other reader of the run counts as checkpoints, oldest first by step
        # (folder times change with renames).
        checkpoints = [p for _, p in checkpoint_folders(root)]
        protected = {checkpoints[-1]} if checkpoints else set()
        if self.state.best_model_checkpoint:
            protected.add(Path(self.state.best_model_checkpoint))
        excess = len(checkpoints) - max(limit, len(protected))
        for old in checkpoints:
            if excess <= 0:
                break
            if old not in protected:
                try:
                    remove_directory(old)
                except OSError:  # as the Trainer's own rotation: an old checkpoint left over fails nothing
                    pass
                excess -= 1
