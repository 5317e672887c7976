"""Pipeline stages: one module per stage, each reading files, calling the pure core and writing
files. `pcam/cli.py` imports them lazily, so a CRF-only stage never imports torch."""
