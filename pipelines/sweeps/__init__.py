"""Ray Tune sweeps over the training config (`tune_configs/*.yaml`), their reports from MLflow, and the demo."""
