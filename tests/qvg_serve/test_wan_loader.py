"""Loader: synthetic checkpoints with Wan2.1 / Self-Forcing key names (tiny shapes, written by
the test) load; missing, unexpected and mis-shaped tensors fail naming the key."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from qvg_serve.models import TINY_TEST, build_model, load_checkpoint, load_state_dict_file

CFG = TINY_TEST


def wan_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a Wan2.1 T2V `WanModel` state dict, written out independently of
    CausalWan so the test checks the names, not just a round trip."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes = {
        "patch_embedding.weight": (d, cfg.in_channels, *cfg.patch),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.head.weight": (math.prod(cfg.patch) * cfg.in_channels, d),
        "head.head.bias": (math.prod(cfg.patch) * cfg.in_channels,),
        "head.modulation": (1, 2, d),
    }
    for i in range(cfg.layers):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{b}{attn}.{proj}.weight"] = (d, d)
                shapes[f"{b}{attn}.{proj}.bias"] = (d,)
            shapes[f"{b}{attn}.norm_q.weight"] = (d,)
            shapes[f"{b}{attn}.norm_k.weight"] = (d,)
        shapes.update(
            {
                f"{b}norm3.weight": (d,),
                f"{b}norm3.bias": (d,),
                f"{b}ffn.0.weight": (f, d),
                f"{b}ffn.0.bias": (f,),
                f"{b}ffn.2.weight": (d, f),
                f"{b}ffn.2.bias": (d,),
                f"{b}modulation": (1, 6, d),
            }
        )
    return shapes


def synthetic_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.1 for k, s in wan_shapes(CFG).items()}


def assert_loaded(model, state):
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_wan_safetensors_loads(tmp_path):
    state = synthetic_state(1)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(state, str(path))
    model = load_checkpoint(build_model(CFG, seed=0), path)
    assert_loaded(model, state)


def test_safetensors_shard_directory_loads(tmp_path):
    state = synthetic_state(2)
    keys = sorted(state)
    save_file({k: state[k] for k in keys[::2]}, str(tmp_path / "a.safetensors"))
    save_file({k: state[k] for k in keys[1::2]}, str(tmp_path / "b.safetensors"))
    assert_loaded(load_checkpoint(build_model(CFG), tmp_path), state)


def test_self_forcing_pt_prefers_generator_ema(tmp_path):
    ema, raw = synthetic_state(3), synthetic_state(4)
    ckpt = {
        "generator": {f"model.{k}": v for k, v in raw.items()},
        "generator_ema": {f"model.{k}": v for k, v in ema.items()},
    }
    torch.save(ckpt, tmp_path / "self_forcing_dmd.pt")
    assert_loaded(load_checkpoint(build_model(CFG), tmp_path / "self_forcing_dmd.pt"), ema)


def test_self_forcing_pt_generator_only_bf16(tmp_path):
    raw = {k: v.bfloat16() for k, v in synthetic_state(5).items()}
    torch.save({"generator": {f"model.{k}": v for k, v in raw.items()}}, tmp_path / "g.pt")
    model = load_checkpoint(build_model(CFG), tmp_path / "g.pt")
    assert_loaded(model, {k: v.float() for k, v in raw.items()})


def test_missing_key_is_named(tmp_path):
    state = synthetic_state(6)
    del state["blocks.1.cross_attn.norm_k.weight"]
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): blocks\.1\.cross_attn\.norm_k"):
        load_checkpoint(build_model(CFG), tmp_path / "m.safetensors")


def test_unexpected_key_is_named(tmp_path):
    state = synthetic_state(7)
    state["blocks.0.self_attn.k_img.weight"] = torch.zeros(CFG.dim, CFG.dim)
    torch.save({"generator_ema": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): blocks\.0\.self_attn\.k_img"):
        load_checkpoint(build_model(CFG), tmp_path / "x.pt")


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    state = synthetic_state(8)
    state["head.head.weight"] = torch.zeros(CFG.in_channels, CFG.dim)
    save_file(state, str(tmp_path / "s.safetensors"))
    msg = r"head\.head\.weight: checkpoint \(4, 48\) vs model \(16, 48\)"
    with pytest.raises(ValueError, match=msg):
        load_checkpoint(build_model(CFG), tmp_path / "s.safetensors")


def test_non_state_dict_and_absent_file_fail(tmp_path):
    torch.save({"step": torch.tensor(3), "config": {"lr": 1.0}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not tensors: \\['config'\\]"):
        load_state_dict_file(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_state_dict_file(tmp_path / "absent.safetensors")
