"""Time one layer's chunk pass on the GPU: the fused `chunk_qkv` (kernels/chunk_rope_triton.py)
over launch shapes, against the three launches it replaces (RoPE k into rows with the
table-based `rope_rows`, v copied into rows, RoPE q), same tensors, same run.

    python tools/chunk_rope_sweep.py [--tokens 4680] [--out DIR]

Self-Forcing-1.3B shapes by default (a chunk of 3 latent frames = 4,680 tokens, 12 heads x 128,
Wan's 3D RoPE on 30 x 52); q, k, v are views of one [N, 3, H, D] projection as in the model.
Prints one line per config and the best; --out writes chunk_rope_sweep.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kernels.chunk_rope_triton import chunk_angles, chunk_qkv, chunk_qkv_ref
from kernels.paged_read_triton import rope_rows
from qvg_serve.bench.codec import timed
from qvg_serve.models.wan_blocks import WanRope

CONFIGS = [(bs, hg, w) for bs in (8, 16, 32) for hg in (1, 2, 4) for w in (2, 4)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4680)
    p.add_argument("--history", type=int, default=7 * 1560, help="rows before the chunk")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    n, h, d = args.tokens, 12, 128
    rope = WanRope(d, (30, 52)).axial()
    qkv = torch.randn(n, 3, h, d, device=dev).bfloat16()
    q, k, v = qkv.unbind(1)
    pos = torch.arange(args.history, args.history + n, device=dev)
    rows = pos.clone()
    m = args.history + n
    ko, vo = (torch.zeros(m, h, d, device=dev).bfloat16() for _ in "kv")
    cos, sin = chunk_angles(rope, pos)
    kr, vr = ko.clone(), vo.clone()
    ref = chunk_qkv_ref(q, k, v, kr, vr, rows, cos, sin)

    def three():
        rope_rows(k, pos, rope, ko, rows)
        vo.index_copy_(0, rows, v)
        return rope_rows(q, pos, rope)

    _, base = timed(three, dev, args.repeat)
    moved = 3 * 2 * n * h * d * 2  # q, k, v read and written, bf16
    print(f"three launches (rope_rows k, index_copy v, rope_rows q): {base * 1e3:.1f} us")
    rows_out = [{"path": "three", "us": base * 1e3}]
    for cfg in CONFIGS:
        ko.zero_()
        out = chunk_qkv(q, k, v, ko, vo, rows, cos, sin, launch=cfg)
        same = bool(
            torch.allclose(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
            and torch.allclose(ko.float(), kr.float(), atol=2e-2, rtol=2e-2)
            and torch.equal(vo[rows], v)
        )
        _, ms = timed(lambda cfg=cfg: chunk_qkv(q, k, v, ko, vo, rows, cos, sin, launch=cfg),
                      dev, args.repeat)  # fmt: skip
        gbps = moved / ms / 1e6
        rows_out.append({"path": "fused", "launch": cfg, "us": ms * 1e3, "GBps": gbps,
                         "matches_reference": same})  # fmt: skip
        print(f"fused {cfg}: {ms * 1e3:.1f} us, {gbps:.0f} GB/s, {base / ms:.2f}x, same {same}")
    best = min((r for r in rows_out[1:] if r["matches_reference"]), key=lambda r: r["us"])
    print(f"best: {best['launch']} {best['us']:.1f} us ({base * 1e3 / best['us']:.2f}x)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "chunk_rope_sweep.json").write_text(json.dumps(rows_out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
