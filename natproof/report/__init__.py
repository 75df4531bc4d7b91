"""Render a Result: terminal table, file exports and charts."""
