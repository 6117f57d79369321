"""Dagster asset definitions, one module per pipeline stage. Thin: they call coop_dag."""
