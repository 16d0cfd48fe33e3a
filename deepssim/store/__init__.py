"""The DuckDB store (cohorts, embeddings, models, audits and their files), the model
registry and the exact cosine search.
"""
