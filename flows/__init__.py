"""Prefect flows (register_cohort, audit, retrain) and the typer CLI that calls them."""
