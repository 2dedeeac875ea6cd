"""Model adapters behind `qvg_serve.model.VideoModel`: the chunk-causal Wan2.1 DiT
(Self-Forcing / CausVid), its checkpoint loader, a dense-cache reference context and the
text / decoder hooks."""

from .causal_wan import CausalWan, build_model, init_weights, num_parameters
from .dense_context import DenseContext, DenseKV
from .hooks import Decoder, LatentPreview, TextEncoder
from .loader import check_state_dict, load_checkpoint, load_into, load_state_dict_file
from .presets import PRESETS, SELF_FORCING_1_3B, TINY, TINY_TEST, get_preset
from .text import HashedWordEncoder

__all__ = [
    "PRESETS",
    "SELF_FORCING_1_3B",
    "TINY",
    "TINY_TEST",
    "CausalWan",
    "Decoder",
    "HashedWordEncoder",
    "DenseContext",
    "DenseKV",
    "LatentPreview",
    "TextEncoder",
    "build_model",
    "check_state_dict",
    "get_preset",
    "init_weights",
    "load_checkpoint",
    "load_into",
    "load_state_dict_file",
    "num_parameters",
]
