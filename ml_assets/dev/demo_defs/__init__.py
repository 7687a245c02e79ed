"""YAML-declared demo pipelines, loaded by ml_assets.dev.definitions through dg.load_defs."""
