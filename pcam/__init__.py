"""pcam: a workflow-orchestrated reproduction of Puzzle-CAM (Jo & Yu, ICIP 2021)."""

__version__ = "0.1.0"
