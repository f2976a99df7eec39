"""Vigil engine: scheduler, run ledger, shim executor, HA, agents and CLI.

This package never imports Textual or ``tui``; ``tests/unit/test_import_boundary.py`` enforces it.
"""

__version__ = "0.1.0"
