"""Distribution matching (DMD) on the tiny model's own rollouts: the few-step generator is
trained so that its chunks look like the data, not like the posterior mean a regression
target gives (docs/tiny_model.md: three regression terms on the continuation left the
outline a blob; this is the step after them). One H200 run (docs/tiny_model.md, "Distribution
matching"): shape up, motion down; not adopted.

Three copies of the model, as Self-Forcing trains its student:

    generator  G  starts from the teacher; samples a rollout of K chunks from the caption
                  (the inference sampler, each chunk stopping at a random one of the 4 steps)
    real score R  the teacher (a `tiny.train` model), frozen
    fake score F  starts from the teacher; trained with the flow loss on G's rollouts

Generator step: the rollout runs without gradient; one block-causal forward over [its chunks
as context | each chunk's input at its exit step] gives the same chunks with gradient
(`block_causal_x0`, tested equal to the rollout). Each chunk is noised to a random t, R and F
estimate x0 given the rollout's own earlier chunks, and the loss 0.5 * ||x - sg(x - g)||^2
with g = (F - R) / mean|x - R| pushes x along the difference of the two scores (DMD, Yin et
al. 2024). F is updated every step, G every `--ratio` steps.

    python -m qvg_serve.tiny.dmd --teacher qvg_serve/weights/tiny.safetensors --minutes 8 \\
        --out OUT                                   # GPU
    python -m qvg_serve.tiny.dmd --smoke --out /tmp/dmd   # CPU, 2 steps
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.profiler import record_function

from qvg_serve.models import TINY, HashedWordEncoder
from qvg_serve.models.base import sigma
from qvg_serve.tiny import data
from qvg_serve.tiny.evaluate import load_tiny
from qvg_serve.tiny.objective import SHIFT_T, block_causal_x0, flow_loss, make_batch, rollout
from qvg_serve.tiny.train import TRAIN_SEED_BASE, lr_at
from qvg_serve.tiny.train_outputs import save_weights

DMD_T = (20.0, 980.0)
"""Timesteps the DMD loss noises a generated chunk to (uniform), as DMD's [0.02, 0.98]."""


def trainable(path, device):
    """A model loaded from `path` (the teacher's weights) in fp32, in train mode."""
    return load_tiny(path, device).requires_grad_(True).train()


def step_seeds(seed: int, step: int, batch: int) -> range:
    """Clip seeds of step `step` (from `seed`): their captions drive the rollout and, with
    `--regress`, the clips themselves are the regression term's true videos."""
    base = seed * TRAIN_SEED_BASE + step * batch
    return range(base, base + batch)


def captions(seed: int, step: int, batch: int, encoder, device) -> torch.Tensor:
    """Text of step `step`'s captions (the data generator's, from `seed`; clips not rendered)."""
    caps = [data.clip_spec(s).caption for s in step_seeds(seed, step, batch)]
    return encoder.encode(caps).to(device)


def regression_loss(model, seeds, chunks: int, encoder, gen) -> torch.Tensor:
    """`tiny.train`'s flow loss (teacher forcing on the true clips `seeds`, frame-to-frame
    term on) for the generator: an anchor beside the DMD loss. DMD alone sharpened the
    outline and lost motion the teacher had (docs/tiny_model.md); the true clips carry it."""
    batch = make_batch(seeds, chunks, gen.device, encoder)
    return flow_loss(model, batch, gen, motion_weight=1.0)[0]


def exit_rollout(model, text, chunks: int, gen, cpu_gen):
    """`rollout` of `chunks` chunks, each stopping at a random sampler step (no gradient)."""
    exits = torch.randint(len(model.config.timesteps), (chunks,), generator=cpu_gen).tolist()
    was = model.training
    model.eval()
    with record_function("dmd.rollout"):  # labels for tools/dmd_step_profile.py
        got = rollout(model, text, chunks, gen, exits)
    model.train(was)
    return got


def generator_loss(gen_model, real, fake, text, chunks: int, gen, cpu_gen):
    """(DMD loss of one rollout of `chunks` chunks, the rollout [B, K, C, 3, h, w] detached)."""
    x_ng, x_in, t_exit = exit_rollout(gen_model, text, chunks, gen, cpu_gen)
    b = text.shape[0]
    t_in = torch.tensor(t_exit)[None].expand(b, chunks)
    with record_function("dmd.generator_forward"):
        x = block_causal_x0(gen_model, x_ng, x_in, t_in, text)  # = x_ng, with gradient
    lo, hi = DMD_T
    t = lo + (hi - lo) * torch.rand(b, chunks, generator=cpu_gen)
    sig = torch.tensor([[sigma(float(v), SHIFT_T) for v in row] for row in t])
    sig = sig.to(x.device)[..., None, None, None, None]
    xd = x.detach()
    xt = (1 - sig) * xd + sig * torch.randn(xd.shape, generator=gen, device=gen.device)
    with torch.no_grad(), record_function("dmd.scores"):
        r = block_causal_x0(real, xd, xt, t, text)
        f = block_causal_x0(fake, xd, xt, t, text)
        norm = (xd - r).abs().mean(dim=(1, 2, 3, 4, 5), keepdim=True).clamp(min=1e-3)
        g = (f - r) / norm
    loss = 0.5 * (x.float() - (xd - g).float()).pow(2).mean()
    return loss, xd


def fake_loss(fake, video: torch.Tensor, text, gen) -> torch.Tensor:
    """The flow loss of the fake score on a generated video [B, K, C, 3, h, w] (every chunk
    scored, plain weights: `flow_loss` as the teacher was trained, on G's samples)."""
    b, k, c, f, h, w = video.shape
    lat = video.permute(0, 2, 1, 3, 4, 5).reshape(b, c, k * f, h, w)
    batch = (lat, text, torch.ones_like(lat), torch.zeros(b, dtype=torch.long))
    return flow_loss(fake, batch, gen)[0]


def window_mean(window, col: int):
    """Mean of column `col` of the logged rows, NaN entries (no such step) left out; None if
    the window had none."""
    got = [row[col] for row in window if row[col] == row[col]]
    return sum(got) / len(got) if got else None


def parse(argv):
    p = argparse.ArgumentParser(
        prog="python -m qvg_serve.tiny.dmd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--teacher", default=None, help="real score and init (default: shipped)")
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=8.0, help="time budget of the whole run")
    p.add_argument("--stop-after", type=float, default=None, help="minutes in this call")
    p.add_argument("--resume", default=None, help="checkpoint of an earlier call")
    p.add_argument("--ckpt", default=None, help="checkpoint to write (default OUT/dmd_ckpt.pt)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--chunks", type=int, default=6)
    p.add_argument("--ratio", type=int, default=5, help="fake-score steps per generator step")
    p.add_argument("--lr", type=float, default=2e-5, help="generator learning rate")
    p.add_argument("--lr-fake", type=float, default=4e-5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument(
        "--regress",
        type=float,
        default=0.0,
        help="weight of a teacher-forced flow loss on the step's true clips added to the "
        "generator's DMD loss (0: off, pure DMD as Self-Forcing)",
    )
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=float, default=60.0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="CPU: batch 2, 2 chunks, 2 steps (a generator step, then a fake-score-only one)",
    )
    args = p.parse_args(argv)
    if args.ratio < 1 or args.batch < 1 or args.chunks < 1:
        p.error("--ratio, --batch and --chunks must be >= 1")
    if args.regress < 0:
        p.error(f"--regress must be >= 0, got {args.regress}")
    if args.smoke:
        args.batch, args.chunks, args.steps, args.ratio, args.log_every = 2, 2, 2, 2, 1
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    real = load_tiny(args.teacher, dev)  # frozen
    g_model, f_model = trainable(args.teacher, dev), trainable(args.teacher, dev)
    betas = (0.0, 0.999)  # as Self-Forcing's DMD
    g_opt = torch.optim.AdamW(g_model.parameters(), lr=args.lr, betas=betas, weight_decay=0.01)
    f_opt = torch.optim.AdamW(f_model.parameters(), lr=args.lr_fake, betas=betas, weight_decay=0.01)
    ema = {k: v.detach().clone() for k, v in g_model.state_dict().items()}
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    if args.resume and Path(args.resume).exists():
        ck = torch.load(args.resume, map_location=dev)
        g_model.load_state_dict(ck["g"]), f_model.load_state_dict(ck["f"])
        g_opt.load_state_dict(ck["g_opt"]), f_opt.load_state_dict(ck["f_opt"])
        ema, state = ck["ema"], ck["state"]
        print(f"resumed from {args.resume} at step {state['step']}", flush=True)
    encoder = HashedWordEncoder(TINY.text_len, TINY.text_dim)
    gen = torch.Generator(dev).manual_seed(args.seed * 7919 + state["step"])
    cpu_gen = torch.Generator().manual_seed(args.seed * 104729 + state["step"])
    budget, call_start = args.minutes * 60, time.time()
    stop_call = (args.stop_after or 1e9) * 60
    t0, last_save, window = time.time() - state["elapsed"], time.time(), []
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

    def save() -> dict:
        save_weights(ema, out / "tiny.safetensors", prediction=g_model.config.prediction)
        log = {
            "args": vars(args),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "steps": state["step"],
            "train_seconds": round(state["elapsed"], 1),
            "loss_curve": state["losses"],
            "loss_curve_columns": [
                "step",
                "seconds",
                "generator DMD loss",
                "fake flow loss",
                "generator regression loss (--regress)",
            ],
        }
        (out / "tiny_dmd.json").write_text(json.dumps(log, indent=1))
        return log

    while state["step"] < args.steps:
        elapsed = time.time() - t0
        if elapsed > budget or time.time() - call_start > stop_call:
            break
        step = state["step"]
        frac = max(step / args.steps, elapsed / budget)
        text = captions(args.seed, step, args.batch, encoder, dev)
        with torch.autocast(**amp):
            if step % args.ratio == 0:  # generator step (its rollout also feeds F below)
                for grp in g_opt.param_groups:
                    grp["lr"] = lr_at(frac, args.lr, step // args.ratio, args.warmup)
                g_loss, video = generator_loss(
                    g_model, real, f_model, text, args.chunks, gen, cpu_gen
                )
                total, r_loss = g_loss, None
                if args.regress:
                    seeds = step_seeds(args.seed, step, args.batch)
                    with record_function("dmd.regression_forward"):
                        r_loss = regression_loss(g_model, seeds, args.chunks, encoder, gen)
                    total = g_loss + args.regress * r_loss
                with record_function("dmd.generator_backward"):
                    g_opt.zero_grad(set_to_none=True)
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(g_model.parameters(), 1.0)
                    g_opt.step()
                with torch.no_grad():
                    for k, v in g_model.state_dict().items():
                        ema[k].lerp_(v, 1 - min(args.ema, (1 + step) / (10 + step)))
            else:
                g_loss = r_loss = None
                video = exit_rollout(g_model, text, args.chunks, gen, cpu_gen)[0]
            for grp in f_opt.param_groups:
                grp["lr"] = lr_at(frac, args.lr_fake, step, args.warmup)
            with record_function("dmd.fake_forward"):
                f_loss = fake_loss(f_model, video.detach(), text, gen)
        with record_function("dmd.fake_backward"):
            f_opt.zero_grad(set_to_none=True)
            f_loss.backward()
            torch.nn.utils.clip_grad_norm_(f_model.parameters(), 1.0)
            f_opt.step()
        nan = float("nan")
        window.append(
            (
                nan if g_loss is None else g_loss.item(),
                f_loss.item(),
                nan if r_loss is None else r_loss.item(),
            )
        )
        state["step"] = step + 1
        if state["step"] % args.log_every == 0:
            gm, fl, rm = (window_mean(window, col) for col in range(3))
            state["elapsed"] = time.time() - t0
            state["losses"].append([state["step"], round(state["elapsed"], 1), gm, fl, rm])
            print(
                f"step {state['step']:5d}  dmd {'-' if gm is None else f'{gm:.4f}'}  "
                f"fake {fl:.4f}  regress {'-' if rm is None else f'{rm:.4f}'}  "
                f"{state['elapsed']:7.1f}s",
                flush=True,
            )
            window = []
        if time.time() - last_save > args.save_every:  # a killed run still leaves weights
            state["elapsed"] = time.time() - t0
            save()
            last_save = time.time()
    state["elapsed"] = time.time() - t0
    ck = {"g": g_model.state_dict(), "f": f_model.state_dict(), "ema": ema, "state": state}
    ck |= {"g_opt": g_opt.state_dict(), "f_opt": f_opt.state_dict()}
    torch.save(ck, args.ckpt or out / "dmd_ckpt.pt")
    log = save()
    print(f"wrote {out / 'tiny.safetensors'} after {state['step']} steps", flush=True)
    return log


if __name__ == "__main__":
    main()
