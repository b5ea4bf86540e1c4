"""Embedded tasks and rewards that need no download."""
