"""A run: the supervisor (the TaskGroup owner) and its parts (reactions, the executor,
maintenance, the rest keeper), the process clock, restart reconciliation."""
