"""What changes a model inside a ``with``: ablation, steering, ODE steering, LoRA, and conditions."""
