"""The `povd` command line: local commands (validate, run, serve, runs) and the service client."""
