"""Model adapters behind `qvg_serve.models.base.VideoModel`: the chunk-causal Wan2.1 DiT
(Self-Forcing / CausVid), its checkpoint loader, a dense-cache reference context and the
text / decoder hooks."""

from qvg_serve.models.causal_wan import CausalWan, build_model, init_weights, num_parameters
from qvg_serve.models.dense_context import DenseContext, DenseKV
from qvg_serve.models.hooks import Decoder, LatentPreview, TextEncoder
from qvg_serve.models.loader import (
    check_state_dict,
    load_checkpoint,
    load_into,
    load_state_dict_file,
    weights_prediction,
)
from qvg_serve.models.presets import PRESETS, SELF_FORCING_1_3B, TINY, TINY_TEST, get_preset
from qvg_serve.models.text import HashedWordEncoder

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
    "weights_prediction",
    "num_parameters",
]
