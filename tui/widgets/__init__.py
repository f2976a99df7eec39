"""Widgets of the Vigil dashboard."""
