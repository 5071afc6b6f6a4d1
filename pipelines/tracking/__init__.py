"""MLflow tracking: runs and their tags (`runs`), streaming a run's metrics (`hooks`, `target`), and what a
finished run leaves (`artifacts`)."""
