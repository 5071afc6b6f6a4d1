"""Real short video files for the predict tests, written and read with PyAV (no ffmpeg program)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sliding_frames(images: list[Path], count: int, size: tuple[int, int] = (96, 128)) -> list[Image.Image]:
    """`count` (h, w) frames, each one of `images` (in turn) pasted on a grey canvas a few pixels further right
    than the frame before: people that move."""
    height, width = size
    frames = []
    for i in range(count):
        with Image.open(images[i % len(images)]) as image:
            picture = image.convert("RGB")
        frame = Image.new("RGB", (width, height), (90, 90, 90))
        frame.paste(picture, ((3 * i) % max(1, width - picture.width + 1), 0))
        frames.append(frame)
    return frames


def write_video(path: Path, frames: list[Image.Image], codec: str = "libx264", rate: int | Fraction = 12,
                pix_fmt: str = "yuv420p") -> Path:
    """`frames` encoded with `codec` at `rate` frames per second into `path` (the container from its suffix)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_image(frame)))
        container.mux(stream.encode(None))
    return path


def write_audio_only(path: Path) -> Path:
    """A tenth of a second of silence, and no video stream (`.mkv`, `.mka`)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        silence.sample_rate = 8000
        container.mux(stream.encode(silence))
        container.mux(stream.encode(None))
    return path


def damage_png_frames(path: Path, indices: list[int]) -> Path:
    """Overwrites the PNG signature of the given frames of a PNG-coded video (`write_video(codec="png")`, .mov):
    FFmpeg's PNG decoder refuses those packets (InvalidDataError) while the container stays readable."""
    data = bytearray(path.read_bytes())
    starts, at = [], data.find(PNG_SIGNATURE)
    while at >= 0:
        starts.append(at)
        at = data.find(PNG_SIGNATURE, at + 1)
    for i in indices:
        data[starts[i]:starts[i] + len(PNG_SIGNATURE)] = b"X" * len(PNG_SIGNATURE)
    path.write_bytes(bytes(data))
    return path


def read_video(path: Path) -> tuple[list[Image.Image], list[float], Fraction, str]:
    """Every frame of the first video stream as RGB, its time in seconds, the stream's average rate, its codec."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [(frame.to_ndarray(format="rgb24"), float(frame.pts * frame.time_base))
                   for frame in container.decode(stream)]
        return ([Image.fromarray(array) for array, _ in decoded], [t for _, t in decoded], stream.average_rate,
                stream.codec_context.name)


def assert_same_people(got: list[dict], want: list[dict], atol: float = 1e-4) -> None:
    """The same people in the same order: boxes, key points and scores equal up to `atol` (float noise of
    another batch size)."""
    assert len(got) == len(want)
    for key in ("bbox", "keypoints", "score"):
        np.testing.assert_allclose([p[key] for p in got], [p[key] for p in want], rtol=0, atol=atol)
