"""Tests of `pgnet predict` on videos (pgnet.predict.video) and of how inputs are sorted into images and videos
(pgnet.predict.inputs), on real video files written with PyAV.

Every frame's people are checked against `Predictor.people` on the same frame decoded by a separate loop;
the model is a seeded, untrained tiny network decoding with no score threshold, so each frame has top-k people.
"""
from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pgnet.config import EvalConfig
from pgnet.errors import DataError, MissingFileError
from pgnet.models import build_model
from pgnet.predict import Predictor, predict_inputs, predict_video, split_inputs
from pgnet.predict.video import video_encoder
from pgnet.visualize import draw_people
from tests.support.videos import (
    assert_same_people,
    damage_png_frames,
    read_video,
    sliding_frames,
    write_audio_only,
    write_video,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ALL_PEOPLE = EvalConfig(score_threshold=0.0, top_k=3)  # 3 people on every frame: nothing to compare is no test
FRAMES, RATE = 12, 12


@pytest.fixture(scope="module")
def predictor(make_config) -> Predictor:
    cfg = make_config()
    torch.manual_seed(0)
    return Predictor(build_model(cfg.model).eval(), cfg)


@pytest.fixture(scope="module")
def frames(tiny_data) -> list[Image.Image]:
    return sliding_frames(sorted((tiny_data / "train2017").glob("*.jpg")), FRAMES)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_gives_an_annotated_video_and_one_record_per_frame(predictor, frames, tmp_path):
    source = write_video(tmp_path / "walk.mp4", frames, rate=RATE)
    out = predict_video(predictor, source, tmp_path / "out", settings=ALL_PEOPLE, draw_threshold=0.0,
                        progress=False)
    assert (out.video.name, out.records.name, out.frames, out.bad_packets) == ("walk_pgnet.mp4", "walk_pgnet.jsonl",
                                                                                FRAMES, 0)
    drawn, drawn_times, drawn_rate, codec = read_video(out.video)
    assert (len(drawn), drawn[0].size, drawn_rate, codec) == (FRAMES, (128, 96), RATE,
                                                              "h264" if video_encoder() == "libx264" else "mpeg4")
    assert drawn_times == pytest.approx([i / RATE for i in range(FRAMES)])

    records = read_records(out.records)
    decoded, times, _, _ = read_video(source)  # the reference: frames decoded by a loop of the test's own
    assert [r["frame"] for r in records] == list(range(FRAMES))
    assert [r["time"] for r in records] == pytest.approx(times) and times == sorted(set(times))
    for i, (record, frame) in enumerate(zip(records, decoded)):
        want = predictor.people([frame], [i], ALL_PEOPLE)[0]
        assert len(want) == ALL_PEOPLE.top_k
        assert_same_people(record["people"], want)
        # where drawing changes the brightness (yuv420p keeps luma at full size, colour at half), the annotated
        # frame is the drawn one up to the encoder's loss, far from the frame without people
        plain, annotated = np.asarray(frame.convert("L"), float), np.asarray(drawn[i].convert("L"), float)
        want_drawn = np.asarray(draw_people(frame, want, 0.0).convert("L"), float)
        lines = np.abs(want_drawn - plain) > 30
        assert lines.sum() > 50
        drawn_error = np.abs(annotated - want_drawn)[lines].mean()
        undrawn_error = np.abs(annotated - plain)[lines].mean()
        assert drawn_error < 0.35 * undrawn_error, (i, drawn_error, undrawn_error)


def test_an_odd_sized_video_gains_a_column_and_a_row(predictor, frames, tmp_path):
    odd = [frame.crop((0, 0, 127, 95)) for frame in frames[:3]]
    source = write_video(tmp_path / "odd.mkv", odd, codec="mpeg4", rate=Fraction(30000, 1001))
    out = predict_video(predictor, source, tmp_path, progress=False)
    drawn, _, rate, _ = read_video(out.video)
    assert (len(drawn), drawn[0].size, rate) == (3, (128, 96), Fraction(30000, 1001))
    assert np.asarray(drawn[0])[:, 127].max() < 20 and np.asarray(drawn[0])[95].max() < 20  # black padding
    assert [r["frame"] for r in read_records(out.records)] == [0, 1, 2]


def test_a_damaged_frame_is_skipped_counted_and_logged(predictor, frames, tmp_path, caplog):
    source = damage_png_frames(write_video(tmp_path / "damaged.mov", frames[:6], codec="png", pix_fmt="rgb24"), [3])
    with caplog.at_level(logging.WARNING, logger="pgnet.predict"):
        out = predict_video(predictor, source, tmp_path / "out", settings=ALL_PEOPLE, progress=False)
    assert (out.frames, out.bad_packets, out.stopped) == (5, 1, None)
    records = read_records(out.records)
    assert [r["frame"] for r in records] == [0, 1, 2, 3, 4]
    assert [r["time"] for r in records] == pytest.approx([0, 1 / RATE, 2 / RATE, 4 / RATE, 5 / RATE])  # 3 is gone
    for record, i in zip(records, [0, 1, 2, 4, 5]):
        assert_same_people(record["people"], predictor.people([frames[i]], [record["frame"]], ALL_PEOPLE)[0])
    assert len(read_video(out.video)[0]) == 5
    assert any("damaged.mov: 1 damaged packet(s) skipped" in r.getMessage() for r in caplog.records)


def test_a_cut_short_video_gives_the_frames_it_holds_and_a_warning(predictor, frames, tmp_path, caplog):
    whole = write_video(tmp_path / "whole.avi", frames, codec="mjpeg", pix_fmt="yuvj420p").read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[:int(0.6 * len(whole))])  # an AVI lists its frame count in its header
    with caplog.at_level(logging.WARNING, logger="pgnet.predict"):
        out = predict_video(predictor, cut, tmp_path / "out", progress=False)
    assert 0 < out.frames < FRAMES and out.bad_packets == 0
    assert len(read_records(out.records)) == len(read_video(out.video)[0]) == out.frames
    assert any(f"cut.avi: its stream lists {FRAMES} frames but ended after {out.frames}" in r.getMessage()
               for r in caplog.records)


def test_a_video_of_damaged_frames_only_is_a_data_error(predictor, frames, tmp_path):
    source = write_video(tmp_path / "ruined.mov", frames[:2], codec="png", pix_fmt="rgb24")
    damage_png_frames(source, [0, 1])
    with pytest.raises(DataError, match=r"no frame of video .*ruined.mov could be decoded \(2 damaged packets"):
        predict_video(predictor, source, tmp_path / "out", progress=False)
    assert sorted((tmp_path / "out").iterdir()) == []  # no half-written outputs


def unreadable_videos(tmp_path: Path, frames: list[Image.Image]) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the DataError says)."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 50)
    whole = write_video(tmp_path / "whole.mp4", frames[:4]).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[:len(whole) // 2])  # the index (moov) of an mp4 comes last: half a file has none
    sound = write_audio_only(tmp_path / "sound.mkv")
    return {"junk": (junk, f"cannot read video {junk} (Invalid data found when processing input)"),
            "cut": (cut, f"cannot read video {cut} (Invalid data found when processing input)"),
            "audio": (sound, f"{sound} has no video stream (it holds audio)")}


@pytest.mark.parametrize("name", ["junk", "cut", "audio"])
def test_an_unreadable_video_is_a_data_error_before_the_model_loads(frames, tmp_path, name):
    path, message = unreadable_videos(tmp_path, frames)[name]
    with pytest.raises(DataError) as caught:
        predict_inputs(tmp_path / "no_model.pt", [path], tmp_path / "out")  # the model is never opened
    assert str(caught.value) == f"{message}; pass a video file FFmpeg can play (mp4, mkv, mov, avi, webm)"
    assert not (tmp_path / "out").exists()


def test_a_folder_gives_its_images_and_videos_sorted_and_nothing_else(tmp_path):
    folder = tmp_path / "shoot"
    (folder / "sub").mkdir(parents=True)
    for name in ["c.MP4", "b.jpg", "a.webm", "notes.txt", "sub/d.jpg", "A.png"]:
        (folder / name).write_bytes(b"")
    clip = tmp_path / "clip.mov"
    clip.write_bytes(b"")
    found = split_inputs([clip, folder])
    assert found.images == [folder / "A.png", folder / "b.jpg"]
    assert found.videos == [clip, folder / "a.webm", folder / "c.MP4"]


@pytest.mark.parametrize("case", ["missing", "unknown-suffix", "no-suffix", "empty-folder"])
def test_inputs_that_are_neither_images_nor_videos_are_refused(tmp_path, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    (tmp_path / "slides.pdf").write_bytes(b"%PDF")
    (tmp_path / "README").write_text("")
    path, error, message = {
        "missing": (tmp_path / "gone.mp4", MissingFileError, "gone.mp4 does not exist"),
        "unknown-suffix": (tmp_path / "slides.pdf", DataError, "slides.pdf is neither an image (.jpg"),
        "no-suffix": (tmp_path / "README", DataError, "README is neither an image (.jpg"),
        "empty-folder": (tmp_path / "empty", DataError, "holds no images (.jpg"),
    }[case]
    with pytest.raises(error) as caught:
        split_inputs([path])
    assert message in str(caught.value) and str(path) in str(caught.value)
