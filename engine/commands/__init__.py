"""CLI commands too large for engine/cli.py, one module each; engine/cli.py registers them."""
