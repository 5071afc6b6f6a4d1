"""The run core both trainers share: run directory, run state, logs, epoch-end rule and checkpoints.

`pgnet.train` (one process) and `pipelines.training.worker` (a pipeline stage) are each a short loop
over `training_run.TrainingRun`; nothing here knows about Ray.
"""
