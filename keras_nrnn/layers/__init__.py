"""Sequence-level layers built on the cells."""
