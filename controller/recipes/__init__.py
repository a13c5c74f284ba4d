"""Recipes: models, cross-checks and loading; the Plan (machine units, the only reading of a
recipe); the forecast; process_model (pure maths the simulators' plant may import)."""
