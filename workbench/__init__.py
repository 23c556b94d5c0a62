"""LoRA Workbench: point-and-click LoRA fine-tuning on a workstation."""

__version__ = "0.1.0"
