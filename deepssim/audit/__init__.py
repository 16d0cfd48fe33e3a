"""The gate built around the metric: pipeline stages, verification by alignment, the
pass/fail decision, output files, manifest validation, sharding and process pools.
"""
from deepssim._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'pipeline': ['blank_to_none', 'embed_pixels', 'input_sha256', 'ok_rows', 'read_manifest', 'settings_record', 'verdict_table', 'verify_neighbours', 'write_manifest', 'alignment_of'],
    'verify': ['Alignment', 'aligned_reference', 'verify_candidate', 'verify_pair'],
    'gate': ['decide', 'label_scores', 'volume_table'],
    'outputs': ['QUARANTINE_COLUMNS', 'VERDICT_COLUMNS', 'VOLUME_COLUMNS', 'image_ref', 'package_versions', 'point_latest', 'prune_run_folders', 'quarantine_table', 'run_folder_audit_id', 'run_folder_audit_ids', 'run_folder_name', 'summary_text', 'write_summary', 'write_table'],
    'validate': ['ValidationConfig', 'validate_manifest'],
    'shards': ['DEFAULT_SHARD_FILES', 'merge_embeddings', 'merge_ingested', 'plan_shards', 'split_rows'],
    'trail': ['audit_table'],
})
