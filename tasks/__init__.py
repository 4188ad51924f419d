"""Concrete small tasks: data, teacher recipes, shipped tiny teachers and evaluation protocols."""
