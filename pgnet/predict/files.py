"""`pgnet predict` on image files and folders: people drawn on each image, and a COCO results JSON."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from pgnet.config import EvalConfig
from pgnet.data.sample import BadSample, read_image
from pgnet.errors import DataError
from pgnet.predict.predictor import Predictor
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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_images(paths: list[str | Path]) -> list[Path]:
    """The image files to predict on: each file as given, each folder's image files (by suffix, sorted;
    not its sub-folders)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                             "pass image files or a folder of them")
        files.extend(found)
    return files


def drawn_file_names(paths: list[Path]) -> list[str]:
    """`<stem>_pgnet.jpg` per image; a name taken before (the same stem in another folder) gets `_2`, `_3`..."""
    names: list[str] = []
    for path in paths:
        name, n = f"{path.stem}_pgnet.jpg", 1
        while name in names:
            n += 1
            name = f"{path.stem}_{n}_pgnet.jpg"
        names.append(name)
    return names


def predict_files(model: str | Path | Predictor, images: list[str | Path], out_dir: str | Path,
                  eval_cfg: EvalConfig | None = None, draw_threshold: float = 0.3) -> Path:
    """Writes `out_dir/<stem>_pgnet.jpg` with people drawn and `out_dir/results.json` (image ids: `image_ids`,
    each result also names its `file_name`); returns the JSON path. `model`: a checkpoint, an exported
    file (`Predictor.load`) or a Predictor; `images`: files or folders (`expand_images`)."""
    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    paths = expand_images(images)
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
        log.info("%s: %d people above %.2f", path.name, sum(p["score"] >= draw_threshold for p in people),
                 draw_threshold)
    if paths and len(failed) == len(paths):
        raise DataError(f"none of the {len(paths)} image(s) could be read ({', '.join(failed)}); "
                         "pass image files (JPEG, PNG) that Pillow can open")
    out = out_dir / "results.json"
    out.write_text(json.dumps(results))
    if failed:
        log.warning("%d of %d images could not be read: %s", len(failed), len(paths), ", ".join(failed))
    return out
