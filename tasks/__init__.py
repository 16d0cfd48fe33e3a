"""Prefect tasks: thin, coarse wrappers (one per stage or shard) around ``deepssim``.

Tasks exchange paths and small summaries only; results are never persisted
(``persist_result=False``) so no pixels or patient metadata reach Prefect's database.
"""
