"""VAR: Visual AutoRegressive modeling, image generation by next-scale prediction (arXiv 2404.02905)."""
from .editing import box_mask, load_mask
from .pipeline import VAROutput, VARPipeline, bundled_models
from .quantizer import MultiScaleQuantizer
from .quickstart import VAR, VQVAE
from .recipes import PRESETS
from .sampling import generate
from .schedule import patch_nums_from_max_scale, schedule_for
from .transformer import VARConfig
from .vqvae import VQVAEConfig

__version__ = "0.1.0"

__all__ = [
    "VAR", "VARConfig", "VQVAE", "VQVAEConfig", "MultiScaleQuantizer", "VARPipeline", "VAROutput",
    "PRESETS", "generate", "box_mask", "load_mask", "bundled_models", "patch_nums_from_max_scale",
    "schedule_for", "__version__",
]
