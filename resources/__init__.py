"""``ml_assets.resources``: the nouns and protocols (``core``), model registries (``registries``) and
runtimes (``runtimes``), all plain Python: nothing here imports Dagster or Airflow.

Importing this package imports no registry or runtime library: those load lazily. The public
names are exported once, from ``ml_assets``.
"""
