"""YAML-declared demo pipelines, loaded by ml_assets.definitions through dg.load_defs."""
