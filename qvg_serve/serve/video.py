"""Write frames to MP4 (H.264, yuv420p) with PyAV, which bundles its own FFmpeg libraries."""

from __future__ import annotations

from pathlib import Path

import torch


def write_mp4(frames: torch.Tensor, path: str | Path, fps: float = 16.0) -> Path:
    """frames: uint8 [N, H, W, 3] -> a faststart H.264 MP4. Odd sizes are padded by one pixel
    (yuv420p needs even)."""
    import av

    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if frames.shape[0] == 0:
        raise ValueError("no frames to write")
    h, w = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    padded = torch.zeros(frames.shape[0], h, w, 3, dtype=torch.uint8)
    padded[:, : frames.shape[1], : frames.shape[2]] = frames
    path = Path(path)
    # faststart: the index (moov) before the media (mdat), so a player starts before the end
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for img in padded.numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_mp4_frames(path: str | Path) -> int:
    """Number of decodable video frames (for tests and checks)."""
    import av

    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))
