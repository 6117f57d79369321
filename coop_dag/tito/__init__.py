"""Token-in token-out: rendering messages to ids (chat), rows from trajectories with their checks
and parquet I/O (build), and verl's custom dataset (dataset; it runs inside verl's venv)."""
