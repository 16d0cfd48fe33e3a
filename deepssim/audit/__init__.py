"""The gate built around the metric: pipeline stages, verification by alignment, the
pass/fail decision, output files, manifest validation, sharding and process pools.
"""
