"""Pipeline-parallel (x data-parallel) training on Ray Train: the driver (`launch`), the worker loop
(`worker`), one worker's stages and schedule (`runner`, `stages`, `schedules`), and their plumbing.
"""
