"""Durable records: run records (SQLite WAL, a writer thread, the reader, the schema) and the
hash-chained audit trail."""
