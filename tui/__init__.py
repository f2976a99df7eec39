"""Vigil's terminal dashboard (`vigil monitor`). The engine never imports this package."""
