"""The DeepSSIM metric as the paper defines it and how it is trained: reference SSIM,
structure-preserving augmentations, training pairs, the encoder, training, checkpoints,
embedding.  Knows nothing of audits, stores or evaluation.
"""
