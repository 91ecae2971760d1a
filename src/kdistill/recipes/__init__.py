"""Recipes: how the stages compose for a task family (label, generation), multi-stage runs and search."""
