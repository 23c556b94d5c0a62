"""Widgets of the main window; each binds to core objects and holds no training logic."""
