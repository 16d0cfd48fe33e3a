"""The DeepSSIM metric as the paper defines it and how it is trained: reference SSIM,
structure-preserving augmentations, training pairs, the encoder, training, checkpoints,
embedding.  Knows nothing of audits, stores or evaluation.
"""
from deepssim._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'ssim': ['reference_ssim', 'ssim_targets'],
    'model': ['DeepSSIMEncoder'],
    'checkpoint': ['DEFAULT_MODEL', 'CheckpointMeta', 'load_checkpoint', 'read_meta', 'save_checkpoint'],
    'embed': ['Embedder', 'inference_settings', 'resolve_device'],
    'train': ['TrainConfig', 'train_encoder'],
    'trainingdata': ['ImageSet', 'as_pool'],
})
