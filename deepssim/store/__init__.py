"""The DuckDB store (cohorts, embeddings, models, audits and their files), the model
registry and the exact cosine search.
"""
from deepssim._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'database': ['Store', 'StoreBusyError', 'StoreError', 'read_pixel_rows'],
    'registry': ['audit_history', 'champion', 'champion_path', 'cohorts_missing', 'get_model', 'models_dir', 'promote', 'record_model', 'reembed_cohorts', 'registry_table'],
    'search': ['topk_cosine'],
})
