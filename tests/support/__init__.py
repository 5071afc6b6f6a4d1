"""What several test files share: paths, tiny configs, the local Ray, probes (fixtures are in conftest.py)."""
