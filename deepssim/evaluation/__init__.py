"""Tools that judge the metric and the gate: the memorization benchmark, threshold
calibration, champion/challenger retraining evaluation.
"""
from deepssim._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'scoring': ['LABELS', 'calibrate_from_benchmark', 'label_indices', 'macro_f1', 'subject_of'],
    'benchmark': ['build_benchmark', 'markdown_table', 'run_benchmark'],
    'calibrate': ['calibrate_benchmark_dir', 'calibrate_from_cohort', 'calibrate_store_cohort', 'latest_thresholds'],
    'casestudy': ['SampleFilter', 'casestudy_summary', 'gate_agreement', 'generate_samples', 'grid_labels',
                  'memorization_by_copies', 'write_control'],
    'retraining': ['PromotionRule', 'RetrainConfig', 'build_eval_benchmark', 'cohort_image_set', 'decide', 'evaluate_model', 'fixed_eval_set', 'retrain_data', 'scratch'],
})
