"""Recipes as data (catalog: recipes/<name>.yaml), a recipe's stored result and the recipe regression (records), recipes
side by side (compare)."""
