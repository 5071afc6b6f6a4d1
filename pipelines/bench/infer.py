"""`pgnet bench infer`: batch inference on Ray Data against the single-process Predictor, in one run.

Both predict the same image files with the same network and decoding. The single process uses every
thread it is given; the Ray run spreads `replicas` actors of `threads / replicas` threads each, so both
get the same CPUs. Runs alternate (single, Ray, single, Ray...) so that the machine's drift hits both;
the Ray figure is end to end (actors start and load the model in it), as a user waits for it.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pgnet.config import load_config
from pgnet.data.sample import read_image
from pgnet.data.synthetic import write_synthetic_dataset
from pgnet.predict import Predictor
from pgnet.run.build import seeded_model
from pgnet.run.checkpoint import checkpoint_dict
from pgnet.run.state import RunState
from pgnet.torch_files import save_atomic
from pipelines.bench.record import PrintFn
from pipelines.inference.batch import ImageJob, run_batch_inference


def single_process(predictor: Predictor, job: ImageJob, batch: int) -> float:
    """Seconds to read and predict every image of `job` in this process, `batch` images at a time."""
    start = time.perf_counter()
    for i in range(0, len(job.images), batch):
        chunk = job.images[i:i + batch]
        predictor.people([read_image(path) for _, path in chunk], [image_id for image_id, _ in chunk])
    return time.perf_counter() - start


def run_infer_benchmark(config: str = "cpu_small", images: int = 128, image_size: int = 256, replicas: int = 2,
                        threads: int = 2, batch: int = 8, repeats: int = 3, print_fn: PrintFn = print
                        ) -> dict[str, Any]:
    """Images/s of `pgnet infer` (Ray Data, `replicas` actors) and of one process, alternated `repeats` times."""
    import ray

    from pipelines.training.ray_runtime import start_local_ray

    cfg = load_config(config, [])
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-infer-") as tmp:
        root = Path(tmp)
        write_synthetic_dataset(root / "data", 1, images, seed=0, image_size=(image_size, image_size), progress=False)
        model = root / "model.pt"
        save_atomic(checkpoint_dict(cfg, RunState(), seeded_model(cfg).state_dict()), model)
        job = ImageJob.from_coco(root / "data", "val2017")
        if not ray.is_initialized():
            start_local_ray(max(threads, replicas) + 1)
        torch.set_num_threads(threads)
        predictor = Predictor.from_checkpoint(model, device="cpu")
        single_process(predictor, ImageJob(job.images[:batch], job.source), batch)  # warm-up
        print_fn(f"{len(job.images)} images of {image_size}x{image_size}, {config} at "
                 f"{cfg.data.input_size[0]}x{cfg.data.input_size[1]}, batch {batch}; one process on {threads} "
                 f"threads against Ray Data with {replicas} replicas of {max(1, threads // replicas)} thread(s)")
        single, distributed, steady = [], [], []
        for r in range(repeats):
            single.append(len(job.images) / single_process(predictor, job, batch))
            report = run_batch_inference(model, job, root / f"results{r}.json", replicas=replicas, batch_size=batch,
                                         cpus_per_replica=max(1, threads // replicas), progress=False)
            distributed.append(report.images / report.seconds)
            steady.append(report.steady_images_per_s or 0.0)
            print_fn(f"repeat {r + 1}: one process {single[-1]:.2f} images/s, Ray Data {distributed[-1]:.2f} "
                     f"images/s end to end ({report.first_record_seconds:.1f} s to the first record, "
                     f"{steady[-1]:.2f} images/s after it)")
    result = {"images": len(job.images), "replicas": replicas, "threads": threads, "batch": batch,
              "single_images_per_s": single, "ray_images_per_s": distributed, "ray_steady_images_per_s": steady,
              "single_median": statistics.median(single), "ray_median": statistics.median(distributed),
              "ray_steady_median": statistics.median(steady)}
    result["ratio"] = result["ray_median"] / result["single_median"]
    result["steady_ratio"] = result["ray_steady_median"] / result["single_median"]
    print_fn("")
    print_fn("| runner | images/s (median) | spread (min-max) |")
    print_fn("|---|---|---|")
    print_fn(f"| one process, {threads} threads | {result['single_median']:.2f} | "
             f"{min(single):.2f}-{max(single):.2f} |")
    print_fn(f"| Ray Data, {replicas} replicas | {result['ray_median']:.2f} | "
             f"{min(distributed):.2f}-{max(distributed):.2f} |")
    print_fn(f"| Ray Data after its first record | {result['ray_steady_median']:.2f} | "
             f"{min(steady):.2f}-{max(steady):.2f} |")
    print_fn(f"Ray Data / one process: {result['ratio']:.2f}x end to end, {result['steady_ratio']:.2f}x after the "
             "first record")
    return result
