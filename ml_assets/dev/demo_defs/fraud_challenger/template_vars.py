"""Template variables of the demo's YAML pipeline: where ``ml-assets demo`` put its files."""

import dagster as dg

from ml_assets.dev.demo import demo_root


@dg.template_var
def demo_root_dir() -> str:
    """``$ML_ASSETS_DEMO_ROOT`` or ``./.demo``, read when the definitions load (never written)."""
    return str(demo_root())
