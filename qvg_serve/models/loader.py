"""Checkpoint loading for CausalWan: Wan2.1 safetensors and Self-Forcing `.pt` files.

Accepted inputs (nothing is ever downloaded):

- Wan2.1-T2V-1.3B `diffusion_pytorch_model.safetensors` (or a directory of `*.safetensors`
  shards): keys are already CausalWan's, e.g. `blocks.0.self_attn.q.weight`.
- Self-Forcing / CausVid `.pt`: a dict with `generator_ema` (preferred) or `generator`, whose
  keys carry the wrapper's `model.` prefix (`model.blocks.0.self_attn.q.weight`); FSDP /
  activation-checkpoint / torch.compile wrapper names inside keys are dropped too.

`load_into` is strict: missing, unexpected and mis-shaped tensors each raise ValueError
naming the keys (and shapes), all problems in one message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_GENERATOR_KEYS = ("generator_ema", "generator")
_MAX_LISTED = 8


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (or a directory of safetensors shards), on the CPU, with
    CausalWan key names."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise ValueError(f"{path}: directory holds no *.safetensors files")
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(shard))
        return state
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    return normalize_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def weights_prediction(path: str | Path) -> str:
    """What the head of a weights file predicts: its safetensors metadata's "prediction"
    ("flow" or "x0", written by `tiny.train`); "flow" for any other file (Wan2.1,
    Self-Forcing and every earlier file predict the flow)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return "flow"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("prediction", "flow")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return normalize_state_dict(load_file(str(path), device="cpu"))


def normalize_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """Pick the generator out of a training checkpoint and strip wrapper prefixes."""
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors")
    for key in _GENERATOR_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"checkpoint entries are not tensors: {bad[:_MAX_LISTED]} (expected a state dict, "
            f"or a dict with one of {list(_GENERATOR_KEYS)})"
        )
    return {_clean_key(k): v for k, v in obj.items()}


def _clean_key(key: str) -> str:
    for part in _WRAPPER_PARTS:
        key = key.replace(part, "")
    return key.removeprefix("model.")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """ValueError naming every missing, unexpected or mis-shaped key; silent if they match."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:_MAX_LISTED])}"
        + (" ..." if len(keys) > _MAX_LISTED else "")
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("mis-shaped tensors", mismatched),
        )
        if keys
    ]
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems))


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy `state` into `model` (cast to each parameter's dtype/device) after strict checks."""
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """`load_into(model, load_state_dict_file(path))`."""
    return load_into(model, load_state_dict_file(path))
