"""The tiny model's training objective: batches of procedural clips, one teacher-forced
block-causal forward (its attention contexts: `qvg_serve.tiny.contexts`), the model's own
rollouts, and the flow-matching loss with its added terms
(first-chunk batches, frame-to-frame error, the model's own first chunk as context, the
model's redrawing of the true context). The loop that drives it is `qvg_serve.tiny.train`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qvg_serve.engine.sampler import guide, sigma
from qvg_serve.models import TINY, DenseContext, DenseKV, HashedWordEncoder
from qvg_serve.models.base import ChunkInput
from qvg_serve.models.pixel_ae import PixelAE
from qvg_serve.tiny import data
from qvg_serve.tiny.batch_render import render_batch
from qvg_serve.tiny.contexts import BlockCausalContext, LockstepContext

SHIFT_T = 5.0
"""Timestep shift (the engine's `SHIFT`)."""


OBJECT_WEIGHT = 4.0
"""Extra loss weight on object pixels (weight 1 + OBJECT_WEIGHT * coverage): the object
covers 4-13 % of a frame, the background the rest."""
START_FRACTION = 0.5
"""Share of training clips taken from frame 0 (the caption's fixed first pose); the rest
start at a random frame in [1, 150] and teach continuation far into a clip."""


X0_LOSS_SIGMA = 0.2
"""For an x0 head (`ModelConfig.prediction`) the flow error of a chunk is its x0 error / sigma,
so near t = 0 a few chunks (1 / sigma^2 up to 400) would outweigh the rest; below this sigma
the loss weighs the x0 error as at this sigma (x0 MSE x 25 at most). The sampler's own steps
(sigma >= 0.63) keep the plain flow MSE."""


def clip_window(seed: int) -> int:
    """Start frame of training clip `seed`: 0 with probability START_FRACTION, else a random
    frame in [1, 150] (both drawn from the seed)."""
    gen = torch.Generator().manual_seed(seed ^ 0x57A27)
    if torch.rand((), generator=gen).item() < START_FRACTION:
        return 0
    return int(torch.randint(1, 151, (), generator=gen))


def latent_weight(cover: torch.Tensor) -> torch.Tensor:
    """Object coverage [F, H, W] -> loss weight [C, F, h, w] in the PixelAE layout."""
    a = F.pixel_unshuffle(cover[:, None], PixelAE().factor)  # [F, 16, h, w]
    return (1 + OBJECT_WEIGHT * torch.cat([a] * 3, 1)).transpose(0, 1)


def make_batch(seeds, chunks: int, device, encoder: HashedWordEncoder, from_start=False,
               batched: bool = True):  # fmt: skip
    """(latents [B, C, K * 3, h, w] fp32, text [B, text_len, text_dim], loss weight like
    latents, starts [B]: each clip's first frame). `from_start`: every clip from frame 0.
    `batched` False renders clip by clip (`data.render`): the same values, ~150 small ops
    per clip instead of a few hundred for the batch (kept for tests and timing)."""
    seeds = list(seeds)
    specs = [data.clip_spec(s) for s in seeds]
    starts = [0 if from_start else clip_window(s) for s in seeds]
    n, b, ae = chunks * TINY.frames_per_chunk, len(seeds), PixelAE()
    text = encoder.encode([spec.caption for spec in specs]).to(device)
    if not batched:
        got = [data.render(sp, n, st, device, True) for sp, st in zip(specs, starts, strict=True)]
        lats = torch.stack([ae.encode(frames) for frames, _ in got])
        weights = torch.stack([latent_weight(cover) for _, cover in got])
        return lats, text, weights, torch.tensor(starts)
    frames, cover = render_batch(specs, n, starts, device)

    def per_clip(x):  # [C, B * n, h, w] -> [B, C, n, h, w]
        return x.unflatten(1, (b, n)).transpose(0, 1).contiguous()

    lats = per_clip(ae.encode(frames.flatten(0, 1)))
    weights = per_clip(latent_weight(cover.flatten(0, 1)))
    return lats, text, weights, torch.tensor(starts)


def sample_t(n: int, gen: torch.Generator, p_table: float = 0.5, table=None) -> torch.Tensor:
    """n timesteps: with probability p_table one of `table` (default: the inference
    timesteps), else uniform in [0, 1000]."""
    table = torch.tensor(table or TINY.timesteps)
    pick = table[torch.randint(len(table), (n,), generator=gen)]
    uniform = torch.rand(n, generator=gen) * 1000
    return torch.where(torch.rand(n, generator=gen) < p_table, pick, uniform)


FIRST_P_TABLE = 0.75
"""First-chunk batches draw 3 in 4 timesteps from the sampler's own table: the first chunk
is made from the caption alone, at exactly those steps (t = 1000 decides where and what)."""


def flow_loss(
    model,
    batch,
    gen: torch.Generator,
    context_noise: float = 0.05,
    p_table: float = 0.5,
    table=None,
    motion_weight: float = 0.0,
    own_first: float = 0.0,
    text_dropout: float = 0.0,
    own_chunks: int = 1,
    self_context: float = 0.0,
):
    """(weighted MSE of the predicted flow, plain MSE on object pixels) over the noisy
    chunks of `batch` (from `make_batch`); `gen` on the latents' device draws the noise (a
    CPU generator seeded from it draws timesteps). A clip that does not start at frame 0
    is not scored on its first chunk: without context, that chunk is the caption's first
    pose only at frame 0. `motion_weight` adds the weighted MSE of the error's change from
    frame to frame inside a chunk: the same optimum, but a chunk drawn from the caption alone
    that stands still while the object should move costs more (its 1-2 px per frame of
    motion is below the 8 px token and barely shows in the plain MSE). An x0 head's error is
    capped at sigma < `X0_LOSS_SIGMA` (its x0 error / 0.2 there). `text_dropout`: the
    share of clips whose noisy chunks get the empty text (clean context keeps the caption,
    as the engine's cache does): the unconditional model classifier-free guidance needs.
    `own_chunks`: how many leading context chunks `own_first` replaces by the model's own
    rollout (1: chunk 0 only; at most K - 1). `self_context`: the share of clips whose clean
    context chunks are the model's own redrawing of them (`self_denoised_context`); applied
    before `own_first`, targets stay the true clip's."""
    latents, text, weight, starts = batch
    cpu_gen = torch.Generator().manual_seed(
        int(torch.randint(2**62, (), generator=gen, device=gen.device))
    )
    b, _, frames, _, _ = latents.shape
    fpc = model.config.frames_per_chunk
    k = frames // fpc
    x0 = latents.unflatten(2, (k, fpc)).permute(0, 2, 1, 3, 4, 5)  # [B, K, C, 3, h, w]
    t = sample_t(b * k, cpu_gen, p_table, table).view(b, k)
    s = torch.tensor([[sigma(float(v), SHIFT_T) for v in row] for row in t])
    s = s.to(latents.device)[..., None, None, None, None]
    noise = torch.randn(x0.shape, generator=gen, device=gen.device)
    xt = (1 - s) * x0 + s * noise
    aug = torch.rand(b, 1, 1, 1, 1, 1, generator=cpu_gen).to(latents.device) * context_noise
    ctx_clean = x0 + aug * torch.randn(x0.shape, generator=gen, device=gen.device)
    if self_context and k > 1:
        ctx_clean = self_denoised_context(model, ctx_clean, text, self_context, gen, cpu_gen)
    if own_first and k > 1:
        ctx_clean = with_own_first_chunk(
            model, ctx_clean, text, starts, own_first, gen, min(own_chunks, k - 1)
        )
    drop = (torch.rand(b, generator=cpu_gen) < text_dropout).tolist()
    chunks = []
    for i in range(b):
        noisy_text = torch.zeros_like(text[i]) if drop[i] else text[i]
        chunks += [ChunkInput(ctx_clean[i, j], 0.0, text[i], j * fpc) for j in range(k - 1)]
        chunks += [ChunkInput(xt[i, j], float(t[i, j]), noisy_text, j * fpc) for j in range(k)]
    out = model(chunks, BlockCausalContext(model, k))
    pred = torch.stack([out[i * (2 * k - 1) + k - 1 + j] for i in range(b) for j in range(k)])
    diff = pred.float() - (noise - x0).reshape(pred.shape).float()  # [B*K, C, 3, h, w]
    if model.config.prediction == "x0":  # flow error = x0 error / sigma: cap 1 / sigma there
        diff = diff * (s.reshape(-1, 1, 1, 1, 1) / X0_LOSS_SIGMA).clamp(max=1.0)
    err = diff.pow(2)
    w = weight.unflatten(2, (k, fpc)).permute(0, 2, 1, 3, 4, 5).reshape(err.shape)
    scored = torch.ones(b, k, device=err.device)
    scored[:, 0] = (starts == 0).float().to(err.device)
    w = w * scored.reshape(-1, 1, 1, 1, 1)
    obj = (w > 1 + OBJECT_WEIGHT / 2).float()  # pixels the object covers more than half
    obj_mse = (err * obj).sum() / obj.sum().clamp(min=1)
    loss = (err * w).sum() / w.sum()
    if motion_weight:
        step = (diff[:, :, 1:] - diff[:, :, :-1]).pow(2)
        wm = w[:, :, 1:]
        loss = loss + motion_weight * (step * wm).sum() / wm.sum().clamp(min=1e-6)
    return loss, obj_mse


SELF_CONTEXT_T = (250.0, 500.0)
"""Timesteps `self_denoised_context` redraws a context chunk from (one each, at random): the
sampler's last two steps (sigma 0.63 / 0.83), where an inference chunk takes its final form."""


SELF_CONTEXT_PASSES = 2
"""How many times `self_denoised_context` redraws: pass p sees pass p - 1's chunks as its
context, as an inference chunk sees chunks that were themselves drawn from drawn chunks."""


@torch.no_grad()
def self_denoised_context(
    model, ctx_clean, text, share: float, gen, cpu_gen, passes: int = SELF_CONTEXT_PASSES
) -> torch.Tensor:
    """`ctx_clean` [B, K, C, 3, h, w] with the first K - 1 chunks of a `share` of the clips
    replaced by the model's own clean estimate of each (no gradient): the true chunk noised to
    a timestep of `SELF_CONTEXT_T`, the model's x0 from it given the chunks before it (one
    block-causal forward per pass, as in training; pass 1 sees the true chunks before it,
    pass p the estimates of pass p - 1). At inference every chunk continues the model's own
    chunks, which are not sharp copies of true ones: the outline goes ragged, the texture
    mottled, and from chunk to chunk the faults add up (the object grows into a blob,
    docs/tiny_model.md). A chunk redrawn from the truth has such faults but keeps the true
    pose, angle and size, so the true next chunk stays a consistent target and the model
    learns to restore the outline; its own free rollout (`own_chunks`) would drift from the
    target clip's random spin and size, and the consistent target would be lost."""
    b, k = ctx_clean.shape[:2]
    pick = (torch.rand(b, generator=cpu_gen) < share).nonzero().flatten()
    if not len(pick) or k < 2:
        return ctx_clean
    n, m = len(pick), k - 1
    true = ctx_clean[pick.to(ctx_clean.device), :m]  # [n, m, C, 3, h, w]
    texts = text[pick.to(text.device)]
    was = model.training
    model.eval()
    est = true
    for _ in range(passes):
        t = torch.tensor(SELF_CONTEXT_T)[
            torch.randint(len(SELF_CONTEXT_T), (n, m), generator=cpu_gen)
        ]
        sig = torch.tensor([[sigma(float(v), SHIFT_T) for v in row] for row in t])
        sig = sig.to(true.device, true.dtype)[..., None, None, None, None]
        noise = torch.randn(true.shape, generator=gen, device=gen.device).to(true.dtype)
        est = block_causal_x0(model, est, (1 - sig) * true + sig * noise, t, texts)
    model.train(was)
    ctx_clean = ctx_clean.clone()
    ctx_clean[pick.to(ctx_clean.device), :m] = est.to(ctx_clean.dtype)
    return ctx_clean


@torch.no_grad()
def sample_first_chunk(model, text: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The model's own first chunk [B, C, 3, h, w] from the captions alone: the inference
    sampler (the preset's timesteps, re-noise with fresh noise, shift `SHIFT_T`)."""
    cfg, b = model.config, text.shape[0]
    shape = (b, cfg.in_channels, cfg.frames_per_chunk, cfg.latent_height, cfg.latent_width)
    x = torch.randn(shape, generator=gen, device=gen.device)
    steps, ctx = cfg.timesteps, BlockCausalContext(model, 1)
    for j, t in enumerate(steps):
        inputs = [ChunkInput(x[i], float(t), text[i], 0) for i in range(b)]
        flows = model(inputs, ctx)
        if cfg.guidance != 1.0:
            flows = guide(model, inputs, flows, ctx, cfg.guidance)
        x0 = x - sigma(float(t), SHIFT_T) * torch.stack(flows).float()
        if j + 1 < len(steps):
            s = sigma(float(steps[j + 1]), SHIFT_T)
            x = (1 - s) * x0 + s * torch.randn(shape, generator=gen, device=gen.device)
    return x0


def block_causal_x0(model, clean, noisy, t, text) -> torch.Tensor:
    """The model's clean estimates [B, K, C, 3, h, w] of `noisy` chunks [B, K, ...] at
    timesteps `t` [B, K], chunk j seeing `clean` chunks < j [B, >= K - 1, ...] (K - 1 used),
    in one block-causal forward, as in training (gradients flow if enabled); x0 = x_t -
    sigma * flow, which for an x0 head is its output."""
    b, k, fpc = noisy.shape[0], noisy.shape[1], model.config.frames_per_chunk
    chunks = []
    for i in range(b):
        chunks += [ChunkInput(clean[i, j], 0.0, text[i], j * fpc) for j in range(k - 1)]
        chunks += [ChunkInput(noisy[i, j], float(t[i, j]), text[i], j * fpc) for j in range(k)]
    out = model(chunks, BlockCausalContext(model, k))
    flows = torch.stack([out[i * (2 * k - 1) + k - 1 + j] for i in range(b) for j in range(k)])
    sig = torch.tensor([[sigma(float(v), SHIFT_T) for v in row] for row in t])
    sig = sig.to(noisy.device, noisy.dtype)[..., None, None, None, None]
    return noisy - sig * flows.view(noisy.shape).to(noisy.dtype)


@torch.no_grad()
def rollout(
    model, text: torch.Tensor, chunks: int, gen: torch.Generator, exits=None, lockstep=True
):
    """The model's own rollout from the captions alone, chunk by chunk over a dense history
    of its own committed chunks (the inference sampler, as `sample_first_chunk`; noise from
    `gen`): (x0 [B, chunks, C, 3, h, w], the input x_t of each chunk's last step [same],
    that step's timestep [chunks]). `exits[i]`: chunk i stops after sampler step exits[i]
    and its estimate there is the chunk (Self-Forcing's random exit; default: every step).
    `lockstep`: one `LockstepContext` for the batch (one SDPA per layer); False: a
    `DenseContext` per stream, the engine's reference path (the test compares them)."""
    cfg, b, fpc = model.config, text.shape[0], model.config.frames_per_chunk
    shape = (b, cfg.in_channels, fpc, cfg.latent_height, cfg.latent_width)
    steps = cfg.timesteps
    exits = [len(steps) - 1] * chunks if exits is None else list(exits)
    hists, out, last_x = [DenseKV.empty(cfg.layers) for _ in range(b)], [], []
    lock = LockstepContext(model, b) if lockstep else None
    for i in range(chunks):
        x = torch.randn(shape, generator=gen, device=gen.device)
        for j, t in enumerate(steps[: exits[i] + 1]):
            inputs = [ChunkInput(x[m], float(t), text[m], i * fpc) for m in range(b)]
            ctx = lock.at(i * fpc) if lock else DenseContext(model, hists, inputs)
            flows = model(inputs, ctx)
            if cfg.guidance != 1.0:
                flows = guide(model, inputs, flows, ctx, cfg.guidance)
            x0 = x - sigma(float(t), SHIFT_T) * torch.stack(flows).float()
            if j < exits[i]:
                s = sigma(float(steps[j + 1]), SHIFT_T)
                x = (1 - s) * x0 + s * torch.randn(shape, generator=gen, device=gen.device)
        out.append(x0)
        last_x.append(x)
        if i + 1 < chunks:  # the commit pass: only a later chunk reads its K/V
            inputs = [ChunkInput(x0[m], 0.0, text[m], i * fpc) for m in range(b)]
            ctx = lock.at(i * fpc, True) if lock else DenseContext(model, hists, inputs, True)
            model(inputs, ctx)
    return torch.stack(out, 1), torch.stack(last_x, 1), [float(steps[e]) for e in exits]


def sample_chunks(model, text: torch.Tensor, chunks: int, gen: torch.Generator) -> torch.Tensor:
    """The model's own rollout [B, chunks, C, 3, h, w] from the captions alone (`rollout`,
    every sampler step)."""
    return rollout(model, text, chunks, gen)[0]


def with_own_first_chunk(
    model, ctx_clean, text, starts, share: float, gen, chunks: int = 1
) -> torch.Tensor:
    """`ctx_clean` [B, K, C, 3, h, w] with the first chunk (the first `chunks`: the model's
    rollout, `sample_chunks`) of a `share` of the clips that start at frame 0 replaced by the
    model's own sample of it. At inference chunk 1 follows the
    model's own chunk 0, which is blurrier and moves less than the true one; trained only on
    true context the model copies a still chunk 0 and the object stops. Targets stay the true
    clip's: from its own first chunk, the caption must carry the motion on."""
    draw = torch.rand(len(starts), generator=gen, device=gen.device).cpu()  # seeded: reproducible
    pick = (starts == 0) & (draw < share)
    if not pick.any():
        return ctx_clean
    idx = pick.nonzero().flatten().to(ctx_clean.device)
    was = model.training
    model.eval()
    if chunks == 1:
        own = sample_first_chunk(model, text[idx], gen)[:, None]
    else:
        own = sample_chunks(model, text[idx], chunks, gen)
    model.train(was)
    ctx_clean = ctx_clean.clone()
    ctx_clean[idx, :chunks] = own.to(ctx_clean.dtype)
    return ctx_clean
