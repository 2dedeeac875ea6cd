"""Train the tiny preset: flow matching with teacher forcing (diffusion forcing over chunks).

One training sample is a procedural clip of `chunks` chunks (3 frames each) and its caption.
One forward runs, per sample, [clean chunks 0..K-2 | noisy chunks 0..K-1] through the same
`CausalWan` code the engine runs, with the block-causal mask Self-Forcing / CausVid train
with (tests/qvg_serve/test_causal_wan.py checks it equals chunk-by-chunk generation):

    clean i (t = 0, the commit pass) sees clean <= i
    noisy i (own t_i)                sees clean <  i  and itself

Each noisy chunk draws its own timestep (half from the 4 inference timesteps, half uniform
in [0, 1000]), noise level sigma(t) with shift 5 as `qvg_serve.engine.sampler`; the loss is the MSE
of the predicted flow against v = noise - x0. Clean context is lightly noised at random
(still labelled t = 0) so the model tolerates its own imperfect chunks at inference.

    python -m qvg_serve.tiny.train --minutes 14 --out out/tiny      # one H100
    python -m qvg_serve.tiny.train --smoke --out /tmp/tiny           # CPU, a few steps
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from qvg_serve.models import TINY, HashedWordEncoder, build_model
from qvg_serve.models.base import PREDICTIONS
from qvg_serve.models.loader import load_into, load_state_dict_file
from qvg_serve.tiny.objective import (  # noqa: F401  (train.X names kept for callers)
    FIRST_P_TABLE,
    OBJECT_WEIGHT,
    SHIFT_T,
    START_FRACTION,
    BlockCausalContext,
    clip_window,
    flow_loss,
    latent_weight,
    make_batch,
    sample_first_chunk,
    sample_t,
    with_own_first_chunk,
)
from qvg_serve.tiny.train_outputs import save_weights, write_outputs  # noqa: F401

TRAIN_SEED_BASE = 10**9
"""Training clips use seeds seed * TRAIN_SEED_BASE + k (k < 1e9); evaluation uses
`EVAL_SEED_BASE` + i, which no training run reaches."""
EVAL_SEED_BASE = 10**15
FIRST_SEED_OFFSET = 5 * 10**8
"""First-chunk clips use seeds seed * TRAIN_SEED_BASE + FIRST_SEED_OFFSET + k: disjoint from
the main batches' (k < 5e8 for 15 M steps of 32)."""


def new_model(seed: int, device, config=TINY):
    """`config` (TINY) with seeded init, head zeroed (the DiT training init: start predicting
    0 flow) and the added embeddings' outputs zeroed (frame position embedding, the text
    modulation's last layer): a fine-tune adding them starts as the old model."""
    model = build_model(config, device, torch.float32, seed).train()
    torch.nn.init.zeros_(model.head.head.weight)
    torch.nn.init.zeros_(model.head.head.bias)
    if config.frame_pos_embedding:
        torch.nn.init.zeros_(model.pos_embedding)
    if config.text_modulation:
        torch.nn.init.zeros_(model.text_modulation[2].weight)
        torch.nn.init.zeros_(model.text_modulation[2].bias)
    return model


def model_config(text_modulation: bool | None = None, prediction: str | None = None):
    """TINY, with the text modulation switched on or off and the head predicting the flow or
    x0 (None: as the preset has it)."""
    return replace(
        TINY,
        text_modulation=TINY.text_modulation if text_modulation is None else text_modulation,
        prediction=prediction or TINY.prediction,
    )


NEW_PARAMS = (
    "pos_embedding",
    "text_modulation.0.weight",
    "text_modulation.0.bias",
    "text_modulation.2.weight",
    "text_modulation.2.bias",
)
"""Parameters an older checkpoint may lack (`--init` starts them at their zero init)."""


def init_from(model, path) -> None:
    """Load `path` into `model`; `NEW_PARAMS` it lacks keep the model's own (zero) init, so
    the fine-tune starts from exactly the old model's function."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    load_into(model, {**{k: own[k] for k in NEW_PARAMS if k in own and k not in state}, **state})


def lr_at(frac: float, base: float, step: int, warmup: int) -> float:
    """Linear warmup, then cosine from base to base / 10 over the run (frac in [0, 1])."""
    w = min(1.0, (step + 1) / warmup)
    return base * w * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m qvg_serve.tiny.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--steps", type=int, default=100_000, help="max optimizer steps")
    p.add_argument("--minutes", type=float, default=14.0, help="total training time budget")
    p.add_argument(
        "--stop-after",
        type=float,
        default=None,
        help="stop this call after N minutes (checkpoint; resume with --resume)",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--chunks", type=int, default=6, help="chunks (of 3 frames) per clip")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/tiny", help="directory for tiny.safetensors etc.")
    p.add_argument("--resume", default=None, help="checkpoint file to resume from")
    p.add_argument(
        "--init",
        default=None,
        help="start from these weights (a tiny.safetensors; fresh optimizer): fine-tuning",
    )
    p.add_argument(
        "--first-batch",
        type=int,
        default=64,
        help="extra clips per step trained on their first chunk only, from frame 0, where "
        "the caption alone decides the picture (0: off)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU smoke mode: batch 2, 2 chunks, 4 steps on one fixed batch (same noise and "
        "timesteps every step)",
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--save-every", type=float, default=60.0, help="seconds between weight saves")
    p.add_argument(
        "--ckpt", default=None, help="resumable checkpoint file (default OUT/tiny_ckpt.pt)"
    )
    p.add_argument(
        "--timesteps",
        default=None,
        help="comma-separated timestep table the training draws from (default: the preset's)",
    )
    p.add_argument(
        "--motion-weight",
        type=float,
        default=1.0,
        help="weight of the frame-to-frame error term (see flow_loss; 0: off)",
    )
    p.add_argument(
        "--own-first",
        type=float,
        default=0.5,
        help="share of frame-0 clips whose first context chunk is the model's own sample "
        "(see with_own_first_chunk; 0: off)",
    )
    p.add_argument(
        "--own-chunks",
        type=int,
        default=1,
        help="how many leading context chunks --own-first replaces by the model's own rollout "
        "(1: chunk 0 only, what every shipped run used; at most --chunks - 1)",
    )
    p.add_argument(
        "--self-context",
        type=float,
        default=0.0,
        help="share of clips whose clean context chunks are the model's own redrawing of the "
        "true ones from t = 250 or 500 (see self_denoised_context; 0: off)",
    )
    p.add_argument(
        "--text-dropout",
        type=float,
        default=0.0,
        help="share of clips whose noisy chunks see the empty text, so classifier-free "
        "guidance has an unconditional model (0: off)",
    )
    p.add_argument(
        "--new-lr-mult",
        type=float,
        default=10.0,
        help="learning-rate multiple for NEW_PARAMS (a zero-initialised embedding)",
    )
    p.add_argument(
        "--text-modulation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the caption also modulates every block (ModelConfig.text_modulation; default: "
        "as the tiny preset has it); a fine-tune adding it starts at zero",
    )
    p.add_argument(
        "--prediction",
        choices=PREDICTIONS,
        default=None,
        help="what the head predicts (ModelConfig.prediction; default: as the tiny preset has "
        "it); the loss is the flow MSE either way",
    )
    args = p.parse_args(argv)
    if not 1 <= args.own_chunks < max(args.chunks, 2):
        p.error(
            f"--own-chunks must be in [1, --chunks - 1 = {args.chunks - 1}], got {args.own_chunks}"
        )
    args.table = tuple(float(x) for x in args.timesteps.split(",")) if args.timesteps else None
    if args.smoke:
        args.batch, args.chunks, args.steps, args.warmup, args.log_every = 2, 2, 4, 1, 1
        args.first_batch = min(args.first_batch, 2)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config(args.text_modulation, args.prediction)
    model = new_model(args.seed, dev, config)
    new_params = [p for n, p in model.named_parameters() if n in NEW_PARAMS]
    groups = [
        {"params": [p for n, p in model.named_parameters() if n not in NEW_PARAMS], "mult": 1.0},
        {"params": new_params, "mult": args.new_lr_mult},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    if args.init:
        init_from(model, args.init)
        print(f"initialised from {args.init}", flush=True)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    if args.resume and Path(args.resume).exists():
        ck = torch.load(args.resume, map_location=dev)
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"])
        ema, state = ck["ema"], ck["state"]
        print(f"resumed from {args.resume} at step {state['step']}", flush=True)
    encoder = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    gen = torch.Generator(dev).manual_seed(args.seed * 7919 + state["step"])
    fixed = make_batch(range(args.batch), args.chunks, dev, encoder) if args.smoke else None
    first_fixed = (
        make_batch(range(args.first_batch), 1, dev, encoder, True)
        if args.smoke and args.first_batch
        else None
    )
    budget, call_start = args.minutes * 60, time.time()
    stop_call = (args.stop_after or 1e9) * 60
    t0, window, last_save = time.time() - state["elapsed"], [], time.time()
    while state["step"] < args.steps:
        elapsed = time.time() - t0
        if elapsed > budget or time.time() - call_start > stop_call:
            break
        step = state["step"]
        batch, first = fixed or step_batch(args, step, dev, encoder), first_fixed
        if args.smoke:  # the same noise and timesteps every step: the loss of one fixed sample
            gen.manual_seed(args.seed * 7919)
        lr = lr_at(max(step / args.steps, elapsed / budget), args.lr, step, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["mult"]
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            loss, obj_mse = flow_loss(
                model,
                batch,
                gen,
                table=args.table,
                motion_weight=args.motion_weight,
                own_first=args.own_first,
                text_dropout=args.text_dropout,
                own_chunks=args.own_chunks,
                self_context=args.self_context,
            )
            if args.first_batch:
                first = first or first_batch(args, step, dev, encoder)
                loss = (
                    loss
                    + flow_loss(
                        model,
                        first,
                        gen,
                        p_table=FIRST_P_TABLE,
                        table=args.table,
                        motion_weight=args.motion_weight,
                        text_dropout=args.text_dropout,
                    )[0]
                )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].lerp_(v, 1 - decay)
        window.append((loss.item(), obj_mse.item()))
        state["step"] = step + 1
        if state["step"] % args.log_every == 0 or args.smoke:
            mean, obj = (sum(col) / len(window) for col in zip(*window, strict=True))
            state["losses"].append([state["step"], round(time.time() - t0, 1), mean, obj])
            print(
                f"step {state['step']:6d}  loss {mean:.4f}  object {obj:.4f}  lr {lr:.2e}"
                f"  gnorm {gnorm:.2f}"
                f"  {time.time() - t0:7.1f}s",
                flush=True,
            )
            window = []
            state["elapsed"] = time.time() - t0
        if time.time() - last_save > args.save_every:  # a killed run still leaves weights
            write_outputs(args, dev, out, ema, state, config)
            last_save = time.time()
    state["elapsed"] = time.time() - t0
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema, "state": state},
        args.ckpt or out / "tiny_ckpt.pt",
    )
    return write_outputs(args, dev, out, ema, state, config)


def step_batch(args, step: int, device, encoder):
    """The main batch of optimizer step `step` (a function of seed and step only)."""
    seeds = [args.seed * TRAIN_SEED_BASE + step * args.batch + i for i in range(args.batch)]
    return make_batch(seeds, args.chunks, device, encoder)


def first_batch(args, step: int, device, encoder):
    """Step `step`'s first-chunk batch (None when --first-batch is 0)."""
    if not args.first_batch:
        return None
    base = args.seed * TRAIN_SEED_BASE + FIRST_SEED_OFFSET + step * args.first_batch
    return make_batch(range(base, base + args.first_batch), 1, device, encoder, True)


if __name__ == "__main__":
    main()
