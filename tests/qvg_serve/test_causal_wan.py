"""CausalWan: chunk causality through a dense cache, batching equivalence, 3D RoPE, patching,
full-size shapes, and the latent preview decoder."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tol

from qvg_serve.models import (
    PRESETS,
    SELF_FORCING_1_3B,
    TINY_TEST,
    DenseContext,
    DenseKV,
    LatentPreview,
    build_model,
    get_preset,
    num_parameters,
)
from qvg_serve.models.base import ChunkInput, chunk_positions
from qvg_serve.models.wan_blocks import patchify, unpatchify

CFG = TINY_TEST
FPC = CFG.frames_per_chunk


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, seed=0)


def latents(seed: int, frames: int = FPC) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(CFG.in_channels, frames, CFG.latent_height, CFG.latent_width, generator=g)


def text(seed: int, length: int = CFG.text_len) -> torch.Tensor:
    return torch.randn(length, CFG.text_dim, generator=torch.Generator().manual_seed(seed))


def run(model, chunks, histories, commit=False):
    with torch.no_grad():
        return model(chunks, DenseContext(model, histories, chunks, commit=commit))


class MaskedContext:
    """All chunks of a batch in one SDPA call with an explicit boolean mask [N, N]."""

    def __init__(self, model, positions: torch.Tensor, mask: torch.Tensor) -> None:
        self.model, self.positions, self.mask = model, positions, mask

    def self_attention(self, layer, q, k, v):
        rope = self.model.rope
        q, k = rope(q, self.positions), rope(k, self.positions)
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=self.mask
        )
        return out.transpose(0, 1)


def test_teacher_forcing_matches_block_causal_full_forward(model):
    """Chunk by chunk (noisy pass, then commit pass on clean latents at t=0) equals one forward
    over [clean 0..2, noisy 0..2] where clean i sees clean <= i and noisy i sees clean < i and
    itself: the mask Self-Forcing/CausVid train with."""
    steps = (1000.0, 620.0, 250.0)
    clean = [ChunkInput(latents(i), 0.0, text(9), i * FPC) for i in range(3)]
    noisy = [ChunkInput(latents(10 + i), steps[i], text(9), i * FPC) for i in range(3)]
    hist = DenseKV.empty(CFG.layers)
    step_out, commit_out = [], []
    for i in range(3):
        step_out.append(run(model, [noisy[i]], [hist])[0])
        commit_out.append(run(model, [clean[i]], [hist], commit=True)[0])
    assert hist.tokens() == 3 * CFG.chunk_tokens

    n = CFG.chunk_tokens
    chunk_of = torch.arange(6).repeat_interleave(n)  # 0..2 clean, 3..5 noisy
    idx, is_noisy = chunk_of % 3, chunk_of >= 3
    q_idx, k_idx = idx[:, None], idx[None, :]
    sees_clean = ~is_noisy[None, :] & ((k_idx <= q_idx) & ~is_noisy[:, None] | (k_idx < q_idx))
    sees_self = is_noisy[:, None] & (chunk_of[:, None] == chunk_of[None, :])
    positions = torch.cat([chunk_positions(CFG, c.start_frame) for c in clean + noisy])
    ctx = MaskedContext(model, positions, sees_clean | sees_self)
    with torch.no_grad():
        full = model(clean + noisy, ctx)
    for i in range(3):
        torch.testing.assert_close(step_out[i], full[3 + i], **tol("fp32"))
        torch.testing.assert_close(commit_out[i], full[i], **tol("fp32"))
    # History matters: the last chunk without its history is a different prediction.
    alone = run(model, [noisy[2]._replace(start_frame=0)], [DenseKV.empty(CFG.layers)])[0]
    assert (alone - step_out[2]).abs().max() > 1e-2


def stream_history(model, n_chunks: int, seed: int) -> DenseKV:
    hist = DenseKV.empty(CFG.layers)
    for i in range(n_chunks):
        run(model, [ChunkInput(latents(seed + i), 0.0, text(seed), i * FPC)], [hist], commit=True)
    return hist


@pytest.mark.parametrize("frames_b", [FPC, 2], ids=["equal-chunks", "short-last-chunk"])
def test_batch_equals_each_stream_alone(model, frames_b):
    """Two streams (1 vs 2 committed chunks, different t and text, text lengths 7 and 4) in one
    forward + commit equal each stream alone, outputs and committed K/V."""
    hists = [stream_history(model, 1, 100), stream_history(model, 2, 200)]
    chunks = [
        ChunkInput(latents(1), 750.0, text(1), FPC),
        ChunkInput(latents(2, frames_b), 250.0, text(2, length=4), 2 * FPC),
    ]
    together = copy.deepcopy(hists)
    out = run(model, chunks, together, commit=True)
    for b, chunk in enumerate(chunks):
        alone = copy.deepcopy(hists[b])
        ref = run(model, [chunk], [alone], commit=True)[0]
        assert out[b].shape == chunk.latents.shape
        torch.testing.assert_close(out[b], ref, **tol("fp32"))
        for layer in range(CFG.layers):
            torch.testing.assert_close(together[b].k[layer], alone.k[layer], **tol("fp32"))
            torch.testing.assert_close(together[b].v[layer], alone.v[layer], **tol("fp32"))
    # Per-sample timesteps are used: the same chunk at another t predicts differently.
    other_t = run(model, [chunks[0]._replace(timestep=0.0)], [copy.deepcopy(hists[0])])[0]
    assert (other_t - out[0]).abs().max() > 1e-2


@pytest.mark.parametrize("prediction", ["flow", "x0"])
def test_one_shape_batch_path_equals_the_chunk_by_chunk_path(prediction):
    """A batch of chunks of one shape runs patchify, text padding, unpatchify and the x0
    head's flow as one batch; each output equals the same chunk run through the per-chunk
    path (a batch with a shorter chunk beside it; no history, so chunks do not meet)."""
    import dataclasses

    m = build_model(dataclasses.replace(CFG, prediction=prediction), seed=3)
    same = [ChunkInput(latents(40 + i), t, text(40 + i), 0) for i, t in enumerate((1000, 500, 0))]
    empty = [DenseKV.empty(CFG.layers) for _ in same]
    together = run(m, same, empty)
    short = ChunkInput(latents(49, 1), 250.0, text(49, length=5), 0)
    for i, chunk in enumerate(same):
        ref = run(m, [chunk, short], [DenseKV.empty(CFG.layers) for _ in range(2)])[0]
        assert together[i].shape == chunk.latents.shape and together[i].is_contiguous()
        torch.testing.assert_close(together[i], ref, **tol("fp32"))
    assert (together[0] - together[1]).abs().max() > 1e-2  # per-chunk t and text are used


def test_dense_context_rejects_history_not_matching_start(model):
    chunk = ChunkInput(latents(0), 0.0, text(0), FPC)  # starts at frame 3, history empty
    with pytest.raises(ValueError, match="history holds 0 tokens"):
        DenseContext(model, [DenseKV.empty(CFG.layers)], [chunk])


def test_forward_rejects_wrong_latent_shape(model):
    bad = ChunkInput(torch.zeros(CFG.in_channels, FPC, 8, CFG.latent_width), 0.0, text(0), 0)
    with pytest.raises(ValueError, match="expected \\[C=4, F, H=10, W=14\\]"):
        run(model, [bad], [DenseKV.empty(CFG.layers)])


def wan_rope_reference(x, frame, row, col):
    """Wan's formulation: complex multiply of channel pairs by per-axis polar tables, split
    [c - 2(c//3), c//3, c//3] of the D/2 complex channels, computed in float64."""
    d = x.shape[-1]
    c = d // 2

    def table(dim):
        inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(64, dtype=torch.float64), inv)
        return torch.polar(torch.ones_like(angles), angles)

    freqs = torch.cat([table(d - 4 * (d // 6)), table(2 * (d // 6)), table(2 * (d // 6))], 1)
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    rot = torch.cat([ft[frame], fh[row], fw[col]], dim=-1)[:, None]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], c, 2))
    return torch.view_as_real(xc * rot).flatten(-2).float()


def position(frame, row, col):
    rows, cols = CFG.grid
    return frame * rows * cols + row * cols + col


def test_rope_matches_wan_formulation_and_position_mapping(model):
    positions = torch.tensor([0, 1, 6, 7, 34, 35, 36, 200, 1000])
    rows, cols = CFG.grid
    tpf = rows * cols
    frame, row, col = positions // tpf, (positions % tpf) // cols, positions % cols
    x = torch.randn(
        len(positions), CFG.heads, CFG.head_dim, generator=torch.Generator().manual_seed(3)
    )
    ref = wan_rope_reference(x, frame, row, col)
    torch.testing.assert_close(model.rope(x, positions), ref, **tol("fp32"))
    torch.testing.assert_close(model.rope(x[:1], positions[:1]), x[:1])  # position 0: identity


def test_rope_preserves_norms_and_depends_on_relative_position(model):
    g = torch.Generator().manual_seed(4)
    q = torch.randn(1, CFG.heads, CFG.head_dim, generator=g)
    k = torch.randn(1, CFG.heads, CFG.head_dim, generator=g)
    pos = torch.tensor([position(5, 3, 6)])
    torch.testing.assert_close(model.rope(q, pos).norm(dim=-1), q.norm(dim=-1), **tol("fp32"))

    def score(pq, pk):
        rq = model.rope(q, torch.tensor([position(*pq)]))
        rk = model.rope(k, torch.tensor([position(*pk)]))
        return (rq * rk).sum(-1)

    base = score((2, 1, 1), (0, 0, 3))
    for shift in [(1, 0, 0), (0, 2, 0), (0, 0, 3), (4, 1, 2)]:
        shifted = score(
            tuple(a + s for a, s in zip((2, 1, 1), shift, strict=True)),
            tuple(a + s for a, s in zip((0, 0, 3), shift, strict=True)),
        )
        torch.testing.assert_close(shifted, base, **tol("fp32"))
    for moved in [(3, 1, 1), (2, 2, 1), (2, 1, 2)]:  # one axis difference changes
        assert (score(moved, (0, 0, 3)) - base).abs().max() > 1e-3


def test_patchify_matches_conv3d_and_unpatchify_inverts_wan_order(model):
    x = latents(5)
    conv = model.patch_embedding
    with torch.no_grad():
        ref = conv(x[None])[0].flatten(1).T  # [tokens, dim], tokens in (f, h, w) order
        ours = F.linear(patchify(x, CFG.patch), conv.weight.flatten(1), conv.bias)
    torch.testing.assert_close(ours, ref, **tol("fp32"))
    f, (h, w) = x.shape[1], CFG.grid
    # Wan's head emits features ordered (pt, ph, pw, C): einsum 'fhwpqrc->cfphqwr' inverts it.
    wan_tokens = x.reshape(CFG.in_channels, f, 1, h, 2, w, 2).permute(1, 3, 5, 2, 4, 6, 0)
    back = unpatchify(wan_tokens.reshape(f * h * w, -1), (f, h, w), CFG.patch)
    torch.testing.assert_close(back, x, atol=0, rtol=0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_wan_shapes(name):
    cfg = get_preset(name)
    assert cfg.name == name and cfg.patch[0] == 1 and cfg.head_dim % 2 == 0
    assert build_model(cfg, device="meta").head.head.out_features == 4 * cfg.in_channels
    with pytest.raises(ValueError, match="known: \\["):
        get_preset(name + "-nope")


def test_seeded_init_is_deterministic():
    a, b, c = (build_model(CFG, seed=s).state_dict() for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.1.ffn.0.weight"], c["blocks.1.ffn.0.weight"])


def test_full_size_builds_on_meta_with_wan_1_3b_parameter_count():
    m = build_model(SELF_FORCING_1_3B, device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta for p in m.parameters())
    cfg = SELF_FORCING_1_3B
    assert (cfg.tokens_per_frame, cfg.chunk_tokens, cfg.head_dim) == (1560, 4680, 128)
    d, f = cfg.dim, cfg.ffn_dim
    attn = 4 * (d * d + d) + 2 * d
    block = 2 * attn + 2 * d + (d * f + f + f * d + d) + 6 * d
    embed = (16 * 4 * d + d) + (4096 * d + d + d * d + d) + (256 * d + d + d * d + d)
    embed += 6 * d * d + 6 * d
    head = 64 * d + 64 + 2 * d
    expected = cfg.layers * block + embed + head
    assert num_parameters(m) == expected
    assert 1.3e9 < expected < 1.45e9
    _, axis = m.rotary.tables(torch.device("cpu"))
    assert [int((axis == a).sum()) * 2 for a in range(3)] == [44, 42, 42]


def test_latent_preview_shapes_and_neutral_grey():
    dec = LatentPreview(channels=CFG.in_channels)
    frames = dec.decode(torch.zeros(CFG.in_channels, 2, 3, 5))
    assert frames.dtype == torch.uint8 and frames.shape == (8, 24, 40, 3)
    assert int(frames.min()) == int(frames.max()) == 128  # tanh(0) -> mid-grey
    assert LatentPreview(CFG).factors.shape == (CFG.in_channels, 3)  # config form
    bright = dec.decode(torch.full((CFG.in_channels, 1, 3, 5), 3.0))
    assert int(bright.min()) > 250
    with pytest.raises(ValueError, match="expected \\[C=4"):
        dec.decode(torch.zeros(16, 1, 3, 5))


def test_latent_preview_colour_follows_channels():
    x = torch.zeros(16, 1, 2, 2)
    x[1] = 2.0  # channel 1 -> green
    rgb = LatentPreview().decode(x).float().mean(dim=(0, 1, 2))
    assert rgb[1] > 140 and math.isclose(rgb[0], 128) and math.isclose(rgb[2], 128)
