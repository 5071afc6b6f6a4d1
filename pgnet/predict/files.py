"""`pgnet predict` on image files, video files and folders: people drawn on each image and a COCO results
JSON; each video annotated frame by frame (`pgnet.predict.video`)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pgnet.config import EvalConfig
from pgnet.data.sample import BadSample, read_image
from pgnet.errors import DataError
from pgnet.predict.inputs import IMAGE_SUFFIXES, split_inputs
from pgnet.predict.predictor import Predictor
from pgnet.predict.video import VideoOutput, check_video, predict_video
from pgnet.visualize import draw_people

log = logging.getLogger("pgnet.predict")


def image_ids(paths: list[Path]) -> list[int]:
    """COCO's convention: an image named by its zero-padded id (`000000000785.jpg`) keeps that id, so
    `pgnet eval --annotations` can score the results. When a name is not a number, or two names are
    the same number, the images are numbered 1..N in the order given."""
    stems = [p.stem for p in paths]
    if all(s.isascii() and s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def expand_images(paths: list[str | Path]) -> list[Path]:
    """The image files to predict on: each file as given, each folder's image files (by suffix, sorted;
    not its sub-folders). Videos among them are left to `predict_inputs`; none of them an image: DataError."""
    images = split_inputs(paths).images
    if not images:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) among {', '.join(map(str, paths))}; "
                        "pass image files or a folder of them")
    return images


def drawn_file_names(paths: list[Path], suffix: str = ".jpg") -> list[str]:
    """`<stem>_pgnet<suffix>` per file; a name taken before (the same stem in another folder) gets `_2`, `_3`..."""
    names: list[str] = []
    for path in paths:
        name, n = f"{path.stem}_pgnet{suffix}", 1
        while name in names:
            n += 1
            name = f"{path.stem}_{n}_pgnet{suffix}"
        names.append(name)
    return names


@dataclass(frozen=True)
class PredictOutputs:
    """What `predict_inputs` wrote into `out_dir`."""
    out_dir: Path
    results: Path | None  # the images' COCO results (None: no images given)
    drawn: list[Path]  # the drawn images
    videos: list[VideoOutput]

    def summary(self) -> list[str]:
        """One line per thing written, as `pgnet predict` prints them."""
        lines = []
        if self.results:
            lines.append(f"{len(self.drawn)} drawn image(s) and {self.results} written to {self.out_dir}")
        for video in self.videos:
            damaged = f", {video.bad_packets} damaged packet(s) skipped" if video.bad_packets else ""
            stopped = f", {video.stopped}" if video.stopped else ""
            lines.append(f"{video.video} and {video.records} written ({video.frames} frames{damaged}{stopped})")
        return lines


def predict_inputs(model: str | Path | Predictor, inputs: list[str | Path], out_dir: str | Path,
                   eval_cfg: EvalConfig | None = None, draw_threshold: float = 0.3,
                   progress: bool = True) -> PredictOutputs:
    """Images and videos, files or folders (`split_inputs`): the images as `predict_files`, each video as
    `predict_video` (`progress`: a bar over its frames). Every input is checked (each video opened) before the
    model is loaded."""
    found = split_inputs(inputs)
    for video in found.videos:
        check_video(video)
    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    out_dir = Path(out_dir)
    results, drawn = _predict_images(predictor, found.images, out_dir, eval_cfg, draw_threshold) \
        if found.images else (None, [])
    videos = [predict_video(predictor, video, out_dir, name, eval_cfg, draw_threshold, progress=progress)
              for video, name in zip(found.videos, drawn_file_names(found.videos, suffix=""))]
    return PredictOutputs(out_dir, results, drawn, videos)


def predict_files(model: str | Path | Predictor, images: list[str | Path], out_dir: str | Path,
                  eval_cfg: EvalConfig | None = None, draw_threshold: float = 0.3) -> Path:
    """Writes `out_dir/<stem>_pgnet.jpg` with people drawn and `out_dir/results.json` (image ids: `image_ids`,
    each result also names its `file_name`); returns the JSON path. `model`: a checkpoint, an exported
    file (`Predictor.load`) or a Predictor; `images`: files or folders (`expand_images`)."""
    paths = expand_images(images)
    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    return _predict_images(predictor, paths, Path(out_dir), eval_cfg, draw_threshold)[0]


def _predict_images(predictor: Predictor, paths: list[Path], out_dir: Path, eval_cfg: EvalConfig | None,
                    draw_threshold: float) -> tuple[Path, list[Path]]:
    """Each image's people drawn, all of them in results.json; an image's log line says how it went."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results, failed, drawn = [], [], []
    for image_id, path, drawn_name in zip(image_ids(paths), paths, drawn_file_names(paths)):
        try:
            image = read_image(str(path))
        except BadSample as err:
            log.error("skipping %s: %s", path, err)
            failed.append(str(path))
            continue
        people = predictor.people([image], [image_id], eval_cfg)[0]
        for person in people:
            person["file_name"] = path.name
        results.extend(people)
        draw_people(image, people, score_threshold=draw_threshold).save(out_dir / drawn_name, quality=92)
        drawn.append(out_dir / drawn_name)
        log.info("%s: %d people above %.2f", path.name, sum(p["score"] >= draw_threshold for p in people),
                 draw_threshold)
    if paths and len(failed) == len(paths):
        raise DataError(f"none of the {len(paths)} image(s) could be read ({', '.join(failed)}); "
                        "pass image files (JPEG, PNG) that Pillow can open")
    out = out_dir / "results.json"
    out.write_text(json.dumps(results))
    if failed:
        log.warning("%d of %d images could not be read: %s", len(failed), len(paths), ", ".join(failed))
    return out, drawn
