"""A run's report (issue 10): the summary every reader shares (the CLI's text and JSON, the
HTML), the plots' data from the recorded samples and passes, and the self-contained printable
HTML page (uPlot and the data inlined: it opens offline). Imports no HTTP stack: the CLI
renders reports without a service."""
