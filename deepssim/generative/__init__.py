"""A memorization-prone generator for the paper's case study: a small MONAI diffusion model
(``DiffusionModelUNet`` + DDPM training, deterministic DDIM sampling), the training cohort
it memorizes (real slices, some duplicated many times) and the generator's grid (how a
full-resolution image looks to a generator working at its own size).
"""
from deepssim._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    'grid': ['from_grid', 'through_grid', 'to_grid'],
    'diffusion': ['GeneratorConfig', 'TrainedGenerator', 'build_unet', 'generator_loss',
                  'load_generator', 'sample_images', 'save_generator', 'train_generator'],
    'cohort': ['CohortImage', 'MemorizationCohort', 'memorization_cohort', 'read_cohort_images'],
})
