"""What a run of `qvg_serve.tiny.train` writes: the EMA weights (fp16 safetensors whose
metadata says what the head predicts) and `tiny_train.json`, the run's recipe, arguments and
loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qvg_serve.models import TINY
from qvg_serve.models.pixel_ae import SCALE, SHIFT
from qvg_serve.tiny import data
from qvg_serve.tiny.objective import (
    FIRST_P_TABLE,
    OBJECT_WEIGHT,
    SELF_CONTEXT_T,
    SHIFT_T,
    START_FRACTION,
)


def save_weights(ema: dict, path: Path, dtype=torch.float16, prediction: str = "flow") -> None:
    """fp16 safetensors; the metadata says what the head predicts (`weights_prediction`)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(dtype).cpu().contiguous() for k, v in ema.items()}
    save_file(tensors, str(path), metadata={"prediction": prediction})


def write_outputs(args, dev, out: Path, ema: dict, state: dict, config) -> dict:
    """tiny.safetensors (EMA weights of the `config` model, fp16) and tiny_train.json (recipe
    and loss curve) for a run of `qvg_serve.tiny.train` with `args`."""
    save_weights(ema, out / "tiny.safetensors", prediction=config.prediction)
    log = {
        "config": {f: getattr(config, f) for f in config.__dataclass_fields__},
        "args": vars(args),
        "seed": args.seed,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "steps": state["step"],
        "train_seconds": round(state["elapsed"], 1),
        "final_loss": state["losses"][-1][2] if state["losses"] else None,
        "data": {
            "module": "qvg_serve.tiny.data",
            "frames": args.chunks * 3,
            "size": [data.HEIGHT, data.WIDTH],
            "clip_seeds": "seed * 1e9 + step * batch + i",
            "clip_start": f"frame 0 with p={START_FRACTION}, else U[1, 150] (first chunk unscored)",
            "shapes": data.SHAPES,
            "colours": list(data.COLOURS),
            "shape_motions": data.SHAPE_MOTIONS,
            "backgrounds": data.BACKGROUNDS,
            "photos": data.PHOTOS,
            "camera_motions": data.CAMERA_MOTIONS,
            "photo_fraction": data.PHOTO_FRACTION,
            "latent": f"pixel_unshuffle(4) of (pixel/255 - {SHIFT}) / {SCALE}",
        },
        "recipe": {
            "timesteps": "half from config.timesteps, half U[0,1000]",
            "shift": SHIFT_T,
            "target": "v = noise - x0",
            "prediction": f"the head predicts {config.prediction} (returned as the flow)",
            "context_noise": 0.05,
            "object_weight": f"1 + {OBJECT_WEIGHT} * object coverage",
            "optimizer": "AdamW b=(0.9,0.99) wd=0.01, warmup + cosine to lr/10",
            "ema": args.ema,
            "autocast": "bf16 on cuda",
            "grad_clip": 1.0,
            "first_chunk_batch": f"{args.first_batch} clips from frame 0, first chunk only, "
            f"timesteps from the table with p={FIRST_P_TABLE}, loss added with weight 1",
            "init": args.init,
            "timestep_table": args.table or TINY.timesteps,
            "own_first_chunk": f"{args.own_first} of frame-0 clips: context chunks "
            f"0..{args.own_chunks - 1} are the model's own 4-step rollout (no grad)",
            "motion_weight": f"{args.motion_weight} x weighted MSE of the frame-to-frame error",
            "text_dropout": f"{args.text_dropout} of clips: noisy chunks get the empty text",
            "self_context": f"{args.self_context} of clips: context chunks 0..K-2 are the "
            f"model's x0 estimate of the true ones from t in {SELF_CONTEXT_T} (no grad)",
        },
        "loss_curve": state["losses"],
        "loss_curve_columns": ["step", "seconds", "weighted loss", "object-pixel mse"],
    }
    (out / "tiny_train.json").write_text(json.dumps(log, indent=1))
    print(f"wrote {out / 'tiny.safetensors'} after {state['step']} steps", flush=True)
    return log
