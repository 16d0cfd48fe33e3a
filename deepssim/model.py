"""The DeepSSIM encoder: image -> L2-normalised embedding whose cosine approximates SSIM."""
from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

from .config import EncoderConfig


class DeepSSIMEncoder(nn.Module):
    """A 2D MONAI ResNet with a stride-2 stem and an L2-normalised linear head.

    Each image is standardised (zero mean, unit variance) inside ``forward`` so that a
    linear change of contrast cannot move the embedding, exactly as the SSIM target
    z-scores its inputs.

    Input:  (B, 1, S, S) float tensor, intensities in [0, 1], S = ``config.input_size``.
    Output: (B, D) float tensor of unit L2 norm, D = ``config.embedding_dim``.
    """

    def __init__(self, config: EncoderConfig = EncoderConfig()):
        super().__init__()
        self.config = config
        self.backbone = ResNet(
            block="basic",
            layers=list(config.blocks),
            block_inplanes=list(config.widths),
            spatial_dims=2,
            n_input_channels=1,
            conv1_t_size=7,
            conv1_t_stride=config.stem_stride,
            num_classes=config.embedding_dim,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        features = self.backbone((images - mean) / std)
        return nn.functional.normalize(features.float(), dim=1)


def cosine_scores(emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of two (B, D) batches of unit embeddings -> (B,)."""
    return (emb_a * emb_b).sum(dim=1)
