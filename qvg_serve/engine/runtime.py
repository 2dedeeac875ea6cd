"""Build what the engine runs from an `EngineConfig`: device, dtype, model, text encoder.

Weights: `EngineConfig.weights` when given (Wan2.1 safetensors or a Self-Forcing .pt); else the
weights the project ships for the preset (`qvg_serve/weights/<preset>.safetensors`, the tiny
model); else seeded random weights (benchmarks), with a warning saying so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import torch

from qvg_serve.engine.config import EngineConfig
from qvg_serve.models import (
    HashedWordEncoder,
    build_model,
    get_preset,
    load_checkpoint,
    weights_prediction,
)
from qvg_serve.models.causal_wan import CausalWan

WEIGHTS_DIR = Path(__file__).parent.parent / "weights"  # qvg_serve/weights


class Runtime(NamedTuple):
    model: CausalWan
    text_encoder: HashedWordEncoder
    decoder: object  # a models.hooks.Decoder: latents [C, F, h, w] -> uint8 frames
    device: torch.device
    weights: str  # what was loaded: a path, or "random (seed N)"


def default_decoder(mc):
    """The tiny model's exact pixel autoencoder; for Wan latents (no VAE shipped) the
    documented false-colour latent preview."""
    if mc.name == "tiny":
        from qvg_serve.models.pixel_ae import PixelAE

        return PixelAE()
    from qvg_serve.models.hooks import LatentPreview

    return LatentPreview(mc)


def tiny_prompt_facts(preset: str) -> dict:
    """The tiny model's caption vocabulary and a few of its captions (it knows no other
    words); other models read any text, so they get neither."""
    if preset != "tiny":
        return {}
    from qvg_serve.tiny import data

    examples = dict.fromkeys(data.clip_spec(seed).caption for seed in range(24))
    return {"vocabulary": data.vocabulary(), "examples": list(examples)[:12]}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


def shipped_weights(preset: str) -> Path | None:
    path = WEIGHTS_DIR / f"{preset}.safetensors"
    return path if path.is_file() else None


def load_runtime(cfg: EngineConfig, warn=print) -> Runtime:
    """Model (eval mode, no grad), its text encoder and device, as `cfg` asks."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    mc = get_preset(cfg.model)
    model = build_model(mc, device, dtype, cfg.seed)
    path = Path(cfg.weights) if cfg.weights else shipped_weights(mc.name)
    if path is not None:
        if not path.exists():
            raise ValueError(f"weights {str(path)!r}: no such file")
        predicts = weights_prediction(path)
        if predicts != mc.prediction:
            raise ValueError(
                f"weights {str(path)!r} predict {predicts!r} but model {mc.name!r} has "
                f"prediction={mc.prediction!r}: these weights are for another model"
            )
        load_checkpoint(model, path)
        source = str(path)
    else:
        source = f"random (seed {cfg.seed})"
        warn(f"qvg-serve: no weights for model {mc.name!r}: using {source}", file=sys.stderr)
    model.eval().requires_grad_(False)
    return Runtime(model, default_text_encoder(mc), default_decoder(mc), device, source)


def default_text_encoder(mc) -> HashedWordEncoder:
    """Hashed words; for the tiny model with the vocabulary it was trained on (a prompt with
    other words is refused: ValueError naming them). Other models: an open vocabulary."""
    return HashedWordEncoder(mc.text_len, mc.text_dim, **tiny_prompt_facts(mc.name))
