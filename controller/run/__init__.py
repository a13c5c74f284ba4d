"""A run: the supervisor (the TaskGroup owner) and the parts it holds, each behind a Protocol of
what it needs of it (the run's tasks, the current run, the reactions and the failures that lead
to them, the operator's commands, the record sink, maintenance, the rest keeper), the executor,
the process clock, restart reconciliation."""
