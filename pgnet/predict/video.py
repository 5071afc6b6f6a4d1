"""`pgnet predict` on a video file: the people of every frame, drawn into an annotated video and written
as one JSON record per frame.

PyAV (FFmpeg's libraries; no `ffmpeg` program needed) decodes the first video stream and encodes
`<stem>_pgnet.mp4` (H.264 when PyAV has libx264, else MPEG-4 Part 2) at the source's frame rate and size,
yuv420p. Frames go through `Predictor.people` in small batches, as images do. `<stem>_pgnet.jsonl` holds
`{"frame": i, "time": seconds, "people": [COCO result dicts]}` for frame i of the annotated video; the
time is the source frame's presentation time (pts x time base).

A damaged frame: a packet the decoder refuses is skipped and counted, and the count is logged at the end
(the other frames are still worth having); record i is then the i-th frame decoded, and its time says
where it was. A read error part-way through the file ends the video there, also logged, and so is a
file that ends before the frame count its stream lists (a cut-short download). A file that cannot be
opened, holds no video stream or gives no frame at all is a DataError.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice
from pathlib import Path
from typing import TypeVar

import av
from PIL import Image

from pgnet.config import EvalConfig
from pgnet.errors import DataError
from pgnet.predict.predictor import Predictor
from pgnet.progress import progress_bar
from pgnet.visualize import draw_people

log = logging.getLogger("pgnet.predict")

FRAME_BATCH = 8  # frames per forward pass: a batch of letterboxed inputs, while the decoder waits
DEFAULT_RATE = Fraction(25)  # a stream that states no frame rate
PLAYABLE = "pass a video file FFmpeg can play (mp4, mkv, mov, avi, webm)"
T = TypeVar("T")


@dataclass(frozen=True)
class VideoOutput:
    """What `predict_video` wrote for one source video."""
    source: Path
    video: Path  # the annotated video
    records: Path  # one JSON record per frame of `video`
    frames: int  # decoded frames: records, and frames of `video`
    bad_packets: int = 0  # packets the decoder refused (damaged frames), skipped
    stopped: str | None = None  # why reading ended before the end of the file, if it did


def video_encoder() -> str:
    """H.264 (libx264) when this PyAV build has it, else MPEG-4 Part 2, which every FFmpeg build has."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def open_video(path: str | Path) -> av.container.InputContainer:
    """The opened container of a file with at least one video stream; DataError otherwise."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise DataError(f"cannot read video {path} ({err.strerror}); {PLAYABLE}") from None
    if not container.streams.video:
        kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
        container.close()
        raise DataError(f"{path} has no video stream (it holds {', '.join(kinds)}); {PLAYABLE}")
    return container


def check_video(path: str | Path) -> None:
    """Opens `path` and closes it: a file that cannot be predicted on fails before any work is done."""
    open_video(path).close()


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    """The stream's average frame rate (else FFmpeg's guess, else 25), with a denominator small enough for
    every encoder's time base."""
    rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
    return Fraction(rate).limit_denominator(65535)


def frame_count(container: av.container.InputContainer, rate: Fraction) -> int | None:
    """The first video stream's frame count as the file lists it, else as its duration and rate give it (Matroska
    and WebM list none), else None."""
    if container.streams.video[0].frames:
        return container.streams.video[0].frames
    return round(container.duration / av.time_base * rate) if container.duration else None


class FrameReader:
    """The frames of a container's first video stream as (RGB image, seconds), skipping the packets the
    decoder refuses (`bad_packets`, the first reason in `first_error`); a read error of the container ends
    the frames (`stopped`)."""

    def __init__(self, container: av.container.InputContainer):
        self.container = container
        self.stream = container.streams.video[0]
        self.rate = frame_rate(self.stream)
        self.bad_packets = 0
        self.first_error: str | None = None
        self.stopped: str | None = None

    def __iter__(self) -> Iterator[tuple[Image.Image, float]]:
        index = 0
        packets = self.container.demux(self.stream)  # ends with an empty packet that flushes the decoder
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as err:
                self.stopped = f"reading stopped after {index} frames ({err.strerror})"
                return
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                self.bad_packets += 1
                self.first_error = self.first_error or err.strerror
                continue
            for frame in frames:
                seconds = float(frame.time) if frame.time is not None else float(index / self.rate)
                yield frame.to_image(), seconds
                index += 1


class AnnotatedVideo:
    """The annotated video, opened at its first frame: yuv420p needs an even width and height, so an odd
    one gains a black column or row on the right or bottom (the people's pixel coordinates stay)."""

    def __init__(self, path: Path, rate: Fraction):
        self.path, self.rate = path, rate
        self.container: av.container.OutputContainer | None = None
        self.stream = None

    def write(self, image: Image.Image) -> None:
        width, height = image.width + image.width % 2, image.height + image.height % 2
        if self.container is None:
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream(video_encoder(), rate=self.rate)
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        if image.size != (width, height):
            padded = Image.new("RGB", (width, height))
            padded.paste(image, (0, 0))
            image = padded
        self.container.mux(self.stream.encode(av.VideoFrame.from_image(image)))

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))  # the frames the encoder still holds
            self.container.close()


def predict_video(predictor: Predictor, path: str | Path, out_dir: str | Path, name: str | None = None,
                  settings: EvalConfig | None = None, draw_threshold: float = 0.3, batch_size: int = FRAME_BATCH,
                  progress: bool = True) -> VideoOutput:
    """Writes `out_dir/<name>.mp4` (people above `draw_threshold` drawn on every frame) and
    `out_dir/<name>.jsonl` (every person found, one record per frame); `name` defaults to `<stem>_pgnet`.
    `settings`: decoding keys other than the run's `eval.*`."""
    path, out_dir = Path(path), Path(out_dir)
    name = name or f"{path.stem}_pgnet"
    video_path, records_path = out_dir / f"{name}.mp4", out_dir / f"{name}.jsonl"
    with open_video(path) as container:
        out_dir.mkdir(parents=True, exist_ok=True)
        reader = FrameReader(container)
        writer = AnnotatedVideo(video_path, reader.rate)
        frames = progress_bar(reader, enabled=progress, total=frame_count(container, reader.rate), desc=path.name,
                              unit="frame")
        count = 0
        try:
            with records_path.open("w") as records:
                for batch in _batches(frames, batch_size):
                    people = predictor.people([image for image, _ in batch], range(count, count + len(batch)), settings)
                    for (image, seconds), found in zip(batch, people):
                        records.write(json.dumps({"frame": count, "time": seconds, "people": found}) + "\n")
                        writer.write(draw_people(image, found, score_threshold=draw_threshold))
                        count += 1
        finally:
            writer.close()
    if count == 0:
        records_path.unlink(missing_ok=True)
        why = reader.stopped or (f"{reader.bad_packets} damaged packets, the first: {reader.first_error}"
                                 if reader.bad_packets else "the stream is empty")
        raise DataError(f"no frame of video {path} could be decoded ({why}); {PLAYABLE}")
    if reader.bad_packets:
        log.warning("%s: %d damaged packet(s) skipped (the first: %s); %s holds the %d frames decoded",
                    path.name, reader.bad_packets, reader.first_error, video_path.name, count)
    if reader.stopped:
        log.warning("%s: %s; %s ends there", path.name, reader.stopped, video_path.name)
    elif count + reader.bad_packets < (listed := reader.stream.frames):
        log.warning("%s: its stream lists %d frames but ended after %d; the file may be cut short",
                    path.name, listed, count + reader.bad_packets)
    return VideoOutput(path, video_path, records_path, count, reader.bad_packets, reader.stopped)


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
