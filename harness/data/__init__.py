"""Data: finding, loading, checking and splitting task data; tokenization and batching per family."""
