"""kdsweep: Hydra + Optuna hyperparameter sweeps for knowledge distillation in PyTorch."""
