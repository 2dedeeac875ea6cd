"""Frames on the wire: JPEG encoding, MJPEG multipart parts, SSE events, MP4 from JPEGs.

    MJPEG (multipart/x-mixed-replace; boundary=frame), what browsers and ffmpeg play:

        --frame\\r\\n
        Content-Type: image/jpeg\\r\\n
        Content-Length: 5123\\r\\n
        X-Frame-Index: 0\\r\\n
        \\r\\n
        <5123 bytes of JPEG>\\r\\n
        ...                                    (one part per frame)
        --frame--\\r\\n                          (the stream ended)

    SSE (text/event-stream), what a program parses line by line:

        event: frame
        data: {"index": 0, "chunk": 0, "jpeg": "<base64>", "width": 192, "height": 128}

        event: end
        data: {"reason": "completed", "frames": 48}

A stream's frames are kept as JPEGs (tens of KB each, not the raw ~1 MB of a 480p frame), so
a late reader can replay from frame 0 and video.mp4 is built from them on request.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import torch

BOUNDARY = "frame"
MJPEG_TYPE = f"multipart/x-mixed-replace; boundary={BOUNDARY}"
SSE_TYPE = "text/event-stream"
JPEG_QUALITY = 85  # visually clean at ~1/10 of the raw size; 95 doubles the bytes


def encode_jpegs(frames: torch.Tensor) -> list[bytes]:
    """uint8 [N, H, W, 3] -> N JPEG images."""
    from PIL import Image

    out = []
    for img in frames.numpy():
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
        out.append(buf.getvalue())
    return out


def mjpeg_part(jpeg: bytes, index: int) -> bytes:
    head = (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
        f"X-Frame-Index: {index}\r\n\r\n"
    )
    return head.encode() + jpeg + b"\r\n"


def mjpeg_end() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


def sse_event(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_frame(jpeg: bytes, index: int, chunk: int, size: tuple[int, int]) -> bytes:
    data = {"index": index, "chunk": chunk, "width": size[0], "height": size[1]}
    data["jpeg"] = base64.b64encode(jpeg).decode()
    return sse_event("frame", data)


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG."""
    from PIL import Image

    return Image.open(io.BytesIO(jpeg)).size


def mp4_from_jpegs(jpegs: list[bytes], fps: float) -> bytes:
    """H.264 MP4 of the frames (decoded from JPEG; runs in a worker thread)."""
    import numpy as np
    from PIL import Image

    from qvg_serve.serve.video import write_mp4

    frames = torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(j))) for j in jpegs]))
    with tempfile.TemporaryDirectory() as tmp:
        return write_mp4(frames, Path(tmp) / "v.mp4", fps).read_bytes()


def parse_mjpeg(body: bytes) -> list[bytes]:
    """The JPEGs of an MJPEG multipart body (for tests and the bench)."""
    jpegs, marker = [], f"--{BOUNDARY}\r\n".encode()
    for part in body.split(marker)[1:]:
        head, _, rest = part.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        jpegs.append(rest[:length])
    return jpegs


def parse_sse(lines) -> list[tuple[str, dict]]:
    """(event, data) pairs from an iterable of SSE text lines."""
    events, event = [], "message"
    for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            events.append((event, json.loads(line[5:])))
            event = "message"
    return events
