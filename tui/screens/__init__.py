"""Screens (views and modals) of the Vigil dashboard."""
