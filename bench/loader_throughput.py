"""Loader throughput: our streaming loader against torchvision's ImageFolder + DataLoader.

Both read the same synthetic JPEG files (RGB, 10 classes, stored at the measured size) in the
same shuffled order, in batches of the same size, with the same number of DataLoader worker
processes, and apply the same per-sample work: decode to RGB, to a [3, H, W] tensor, to float
in [0, 1], normalise with ImageNet's mean and std. Ours reads

  ours_files  the JPEG files, through ``compression.data.stream`` (every open checked by
              ``compression.access``), normalised by ``data.preprocess``'s per-sample transform
  ours_wds    the same JPEGs packed into WebDataset tar shards (1000 samples each), read by
              byte range from the index

and torchvision reads the files with ``torchvision.datasets.ImageFolder``. A run is one full
pass over the data set, timed from the first ``iter()`` (worker start-up included) to the last
batch; the figure is images per second, the best of ``--repeats`` passes, the variants
interleaved so that load from other processes spreads over all of them. Building our index
(listing and reading every header) is timed apart: it happens once per job.

    nice -n 10 .venv/bin/python bench/loader_throughput.py     # figures in docs/benchmarks.md
    nice -n 10 .venv/bin/python bench/loader_throughput.py --sizes 64 --images 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from compression.data.lazy_sources import index_imagefolder  # noqa: E402
from compression.data.preprocess import PreprocessSpec, SamplePreprocess  # noqa: E402
from compression.data.stream import SampleDataset, make_loader  # noqa: E402
from compression.data.webdataset import index_webdataset  # noqa: E402

__all__ = ["main", "write_jpegs", "write_shards"]

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLASSES = 10
SHARD_SIZE = 1000


def write_jpegs(root: Path, n: int, size: int, seed: int = 0) -> list[tuple[Path, int]]:
    """n RGB JPEGs (quality 90) of size x size in root/c<k>/: smooth gradients with noise,
    closer to photographs than pure noise (which JPEG neither compresses nor decodes alike)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    out = []
    for i in range(n):
        c = i % CLASSES
        colour = rng.uniform(40, 200, 3)[None, None, :]
        base = colour * (ramp[:, None, None] + ramp[None, :, None]) / 2
        pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        path = root / f"c{c}" / f"{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        out.append((path, c))
    return out


def write_shards(files: list[tuple[Path, int]], folder: Path) -> str:
    """The files as WebDataset shards of SHARD_SIZE samples; returns the brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-len(files) // SHARD_SIZE)
    for s in range(count):
        path = folder / f"shard-{s:04d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for path, c in files[s * SHARD_SIZE:(s + 1) * SHARD_SIZE]:
                key = f"{path.parent.name}-{path.stem}"
                for ext, data in (("jpg", path.read_bytes()), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"shard-{{0000..{count - 1:04d}}}.tar")


def _torchvision_dataset(root: Path) -> Any:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.PILToTensor(),
                             transforms.ConvertImageDtype(torch.float32),
                             transforms.Normalize(MEAN, STD)])
    return datasets.ImageFolder(str(root), transform=tf)


def _torchvision_pass(dataset: Any, order: list[int], batch: int, workers: int) -> int:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=order,
                                         num_workers=workers)
    return sum(len(x) for x, _ in loader)


def _ours_pass(index: Any, order: list[int], batch: int, workers: int) -> int:
    dataset = SampleDataset(index, transform=SamplePreprocess(PreprocessSpec(mean=MEAN, std=STD)))
    keys = [(i, 0, p) for p, i in enumerate(order)]
    batches = [keys[b:b + batch] for b in range(0, len(keys), batch)]
    return sum(len(x) for x, _ in make_loader(dataset, batches, workers))


def _timed(run: Callable[[], int]) -> float:
    start = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - start)


def _measure(size: int, n: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    root = work / f"jpeg{size}"
    files = write_jpegs(root, n, size)
    pattern = write_shards(files, work / f"wds{size}")
    start = time.perf_counter()
    file_index = index_imagefolder(root, 0, None, workers=2).x
    index_seconds = time.perf_counter() - start
    wds_index = index_webdataset(pattern, 0, None).x
    folder = _torchvision_dataset(root)  # its scan of the folders is not timed either
    # ImageFolder and our index list the files in the same order: one permutation serves both
    order = np.random.default_rng(1).permutation(n).tolist()
    rows = []
    for workers in args.workers:
        runs: dict[str, Callable[[], int]] = {
            "torchvision": lambda: _torchvision_pass(folder, order, args.batch, workers),
            "ours_files": lambda: _ours_pass(file_index, order, args.batch, workers),
            "ours_wds": lambda: _ours_pass(wds_index, order, args.batch, workers)}
        best = {name: 0.0 for name in runs}
        for run in runs.values():  # warm-up: imports, page cache, first-call costs
            _timed(run)
        for _ in range(args.repeats):
            for name, run in runs.items():
                best[name] = max(best[name], _timed(run))
        rows.append({"size": size, "images": n, "workers": workers,
                     "index_seconds": index_seconds, **{k: round(v, 1) for k, v in best.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | images | workers | torchvision img/s | ours (files) img/s | ratio | "
             "ours (shards) img/s | ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tv = r["torchvision"]
        lines.append(f"| {r['size']} | {r['images']} | {r['workers']} | {tv:.0f} | "
                     f"{r['ours_files']:.0f} | {r['ours_files'] / tv:.2f} | "
                     f"{r['ours_wds']:.0f} | {r['ours_wds'] / tv:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    p.add_argument("--images", type=int, nargs="+", default=[4000, 1000],
                   help="images per size, in the order of --sizes")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # per-sample work in the main process, like one worker's
    rows = []
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        for size, n in zip(args.sizes, args.images):
            rows += _measure(size, n, args, Path(tmp))
    print(markdown(rows))
    for size in args.sizes:
        index = next(r for r in rows if r["size"] == size)
        print(f"index of {index['images']} files at {size} px: {index['index_seconds']:.2f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
