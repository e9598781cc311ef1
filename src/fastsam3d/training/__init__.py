"""Training and distillation."""
