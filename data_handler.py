"""Datasets of face crops for training and evaluation.

A dataset is either a folder with `real/` and `fake/` subfolders (images at any depth, as in the
Kaggle face-crop datasets) or a `metadata.csv` manifest (`path,label[,group][,split]`, paths relative
to the manifest). The manifest's split is used when present; otherwise a seeded split keeps each
`group` (e.g. a source video and the fakes made from it) inside one split.

For speed on CPUs, the decoded crops of a split are cached once as a uint8 array at the training
size (outside git), and augmentation runs on those tensors.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.transforms import v2

from media import IMAGE_EXTENSIONS

log = logging.getLogger("data_handler")

LABELS = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DFSTUDIO_CACHE", Path.home() / ".cache" / "deepfake-studio"))


# ---------------------------------------------------------------------------------------------------
# Records: one row per image with path, label (0 real / 1 fake), group and split
# ---------------------------------------------------------------------------------------------------
def _label_of(value) -> int:
    text = str(value).strip().lower()
    if text in ("fake", "1", "manipulated", "deepfake"):
        return 1
    if text in ("real", "0", "original", "pristine"):
        return 0
    raise ValueError(f"unknown label {value!r} (expected real/fake or 0/1)")


def _records_from_manifest(csv_path: Path) -> pd.DataFrame:
    table = pd.read_csv(csv_path)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ValueError(f"{csv_path}: manifest lacks column(s) {sorted(missing)}")
    root = csv_path.parent
    records = pd.DataFrame({
        "path": [str((root / p).resolve()) if not os.path.isabs(p) else p for p in table["path"]],
        "label": [_label_of(v) for v in table["label"]],
    })
    records["group"] = table["group"].astype(str) if "group" in table else records["path"]
    if "split" in table:
        records["split"] = table["split"].astype(str).str.lower()
    return records


def _records_from_folders(root: Path) -> pd.DataFrame:
    rows = []
    for name, label in LABELS.items():
        folder = root / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                # Group by the file's stem so near-duplicates named alike stay together.
                rows.append({"path": str(path), "label": label, "group": path.stem})
    if not rows:
        raise ValueError(f"{root}: no images under real/ or fake/ (and no metadata.csv)")
    return pd.DataFrame(rows)


def grouped_split(groups, fractions=DEFAULT_SPLIT_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Assign each group to train/val/test with a seeded shuffle; every member of a group shares a split."""
    unique = np.array(sorted(set(groups)))
    rng = np.random.default_rng(seed)
    rng.shuffle(unique)
    n = len(unique)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # keep every split non-empty on tiny datasets
        n_val = max(n_val, 1)
        n_train = min(max(n_train, 1), n - n_val - 1)
    split_of = {g: ("train" if i < n_train else "val" if i < n_train + n_val else "test")
                for i, g in enumerate(unique)}
    return np.array([split_of[g] for g in groups])


def load_records(data: str | os.PathLike, seed: int = 0) -> pd.DataFrame:
    """Records of a dataset folder or manifest; adds a grouped split when the data has none."""
    data = Path(data)
    if data.is_file() and data.suffix == ".csv":
        records = _records_from_manifest(data)
    elif (data / "metadata.csv").is_file():
        records = _records_from_manifest(data / "metadata.csv")
    elif data.is_dir():
        records = _records_from_folders(data)
    else:
        raise FileNotFoundError(f"{data}: no such dataset folder or manifest")
    if "split" not in records or records["split"].isna().any():
        records["split"] = grouped_split(records["group"].tolist(), seed=seed)
    bad = set(records["split"]) - set(SPLITS)
    if bad:
        raise ValueError(f"{data}: unknown split name(s) {sorted(bad)}")
    return records.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# Decoded cache
# ---------------------------------------------------------------------------------------------------
def _decode(path: str, size: int) -> np.ndarray | None:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR, reducing_gap=None)
            return np.asarray(img, dtype=np.uint8)
    except Exception:  # noqa: BLE001 - any unreadable file is skipped and counted, never fatal
        return None


@dataclass
class CachedSplit:
    images: np.ndarray   # (N, S, S, 3) uint8
    labels: np.ndarray   # (N,) int64, 1 = fake
    paths: list[str]
    groups: list[str]
    skipped: int


def load_split(records: pd.DataFrame, split: str, size: int, cache_dir: str | os.PathLike | None = None,
               max_samples: int | None = None, seed: int = 0, progress: bool = True) -> CachedSplit:
    """Decode one split at `size` px into memory (cached on disk); unreadable files are skipped."""
    rows = records[records["split"] == split]
    if max_samples and len(rows) > max_samples:
        rows = rows.sample(n=max_samples, random_state=seed).sort_index()
    paths, labels, groups = rows["path"].tolist(), rows["label"].to_numpy(), rows["group"].astype(str).tolist()
    key = hashlib.sha256(("\n".join(paths) + f"|{size}").encode()).hexdigest()[:16]
    cache = Path(cache_dir or default_cache_dir()) / f"{split}-{size}-{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            keep = data["keep"]
            images = data["images"]
    else:
        images_list: list[np.ndarray | None] = [None] * len(paths)
        with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2))) as pool:
            for i, img in enumerate(pool.map(lambda p: _decode(p, size), paths, chunksize=64)):
                images_list[i] = img
                if progress and (i + 1) % 5000 == 0:
                    log.info("decoded %d/%d %s images", i + 1, len(paths), split)
        keep = np.array([img is not None for img in images_list])
        images = np.stack([img for img in images_list if img is not None]) if keep.any() else \
            np.zeros((0, size, size, 3), np.uint8)
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Per-process temporary name: under torchrun every rank may build the same cache at once;
        # os.replace makes the last complete write win, and no reader ever sees a partial file.
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, images=images, keep=keep)
        os.replace(tmp, cache)
    skipped = int((~keep).sum())
    if skipped:
        bad = [p for p, k in zip(paths, keep) if not k]
        log.warning("skipped %d unreadable file(s) in %s split, e.g. %s", skipped, split, bad[:3])
    return CachedSplit(images=images, labels=labels[keep].astype(np.int64),
                       paths=[p for p, k in zip(paths, keep) if k],
                       groups=[g for g, k in zip(groups, keep) if k], skipped=skipped)


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------
def eval_transform(input_size: int, mean, std) -> v2.Compose:
    """uint8 CHW tensor -> normalised float at the model's input size (same resize as inference)."""
    return v2.Compose([
        v2.Resize((input_size, input_size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
    ])


class BoxJitter:
    """Re-cut a face crop as if the detector had found a slightly different box, then resize it with
    one of the two filters that inference uses (bilinear or bicubic, antialiased).

    The same face found on a downscaled frame, or in the next frame, gives a box shifted by a few
    per cent and a few per cent larger or smaller; a detector trained on one exact geometry changes
    its score with it (issue 11). The crop's centre moves by up to `shift` of its side and the side
    scales by 1 +- `scale`; where a larger box leaves the crop, the border is mirrored (the training
    crops are tight, so there is nothing beyond them)."""

    def __init__(self, size: int, shift: float = 0.08, scale: float = 0.10):
        self.size, self.shift, self.scale = size, shift, scale
        # Where the jitter and filter are drawn from: torch's global generator, unless a caller sets
        # its own (FaceCropDataset's framing-only views replay every other augmentation).
        self.generator: torch.Generator | None = None
        # An extra move of the drawn box, in pixels of the model's input: (dx, dy, dside). Set by
        # FaceCropDataset's "nudge" views, which cut the same box again a pixel away.
        self.nudge: tuple[float, float, float] | None = None

    def _uniform(self, low: float, high: float) -> float:
        return float(torch.empty(1).uniform_(low, high, generator=self.generator))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, h, w = image.shape
        side = min(h, w) * (1.0 + self._uniform(-self.scale, self.scale))
        cx = w / 2 + self._uniform(-self.shift, self.shift) * side
        cy = h / 2 + self._uniform(-self.shift, self.shift) * side
        if self.nudge is not None:
            px = side / self.size                     # one pixel of the model's input, in this image's pixels
            cx, cy, side = cx + self.nudge[0] * px, cy + self.nudge[1] * px, side + self.nudge[2] * px
        left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
        side_px = max(int(round(side)), 8)
        pad = max(0, -left, -top, left + side_px - w, top + side_px - h)
        if pad:
            pad = min(pad, min(h, w) - 1)  # reflect padding cannot exceed the image
            image = v2.functional.pad(image, [pad, pad, pad, pad], padding_mode="reflect")
            left, top = left + pad, top + pad
        image = v2.functional.crop(image, top, left, side_px, side_px)
        interpolation = (v2.InterpolationMode.BILINEAR if self._uniform(0.0, 1.0) < 0.5
                         else v2.InterpolationMode.BICUBIC)
        return v2.functional.resize(image, [self.size, self.size], interpolation=interpolation, antialias=True)


def train_transform(input_size: int, mean, std, erase: float = 0.0) -> v2.Compose:
    """Augmentations that keep the manipulation traces learnable: crops as a detector cuts them
    (box jitter, both resize filters), mild colour, and the JPEG re-compression and blur that real
    uploads go through. With `erase` > 0, random erasing (Zhong et al., 2020; torchvision's, with its
    default area and aspect ranges) blanks one rectangle of that probability to the mean colour, so
    that a model cannot lean on one region of the face: the shipped models fit their training faces
    three to five times more closely than val (`scripts/experiments/fit_gap.py`), and erasing parts of
    the face was the regulariser of the DFDC competition's best detectors."""
    erasing = [v2.RandomErasing(p=erase, value=0)] if erase > 0 else []   # 0 after Normalize: the mean
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        BoxJitter(input_size),
        # No hue jitter: on this CPU it cost 14 of ColorJitter's 18 ms per 128 px image (HSV round
        # trip), a third of a training step's time, for a +-0.02 hue shift.
        v2.RandomApply([v2.ColorJitter(0.2, 0.2, 0.2)], p=0.5),
        v2.RandomApply([v2.JPEG(quality=(40, 95))], p=0.3),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.2))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean, std),
        *erasing,
    ])


# ---------------------------------------------------------------------------------------------------
# Self-blended pseudo-fakes (Shiohara & Yamasaki, CVPR 2022)
# ---------------------------------------------------------------------------------------------------
def _soft_face_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A blurred ellipse where the inner face sits in the training crop geometry, randomly varied."""
    import cv2

    mask = np.zeros((size, size), np.float32)
    centre = (int(size * rng.uniform(0.46, 0.54)), int(size * rng.uniform(0.45, 0.55)))
    axes = (int(size * rng.uniform(0.28, 0.40)), int(size * rng.uniform(0.36, 0.48)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-10, 10)), 0, 360, 1.0, -1)
    k = int(size * rng.uniform(0.05, 0.15)) | 1
    mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask * float(rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0]))


def self_blend(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend a colour-shifted, slightly warped copy of a real face back into itself through a soft mask,
    so the result carries blending boundaries and colour mismatch but no identity change."""
    import cv2

    size = face.shape[0]
    source = face.astype(np.float32)
    source = source * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-12, 12, size=3)  # colour shift
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    matrix = np.array([[scale, 0, (1 - scale) * size / 2 + shift[0]],
                       [0, scale, (1 - scale) * size / 2 + shift[1]]], np.float32)
    source = cv2.warpAffine(source, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        k = int(rng.choice([3, 5]))
        source = cv2.GaussianBlur(source, (k, k), 0)
    mask = _soft_face_mask(size, rng)[..., None]
    blended = source * mask + face.astype(np.float32) * (1 - mask)
    return np.clip(blended, 0, 255).astype(np.uint8)


NO_PAIRS_MESSAGE = ("--paired needs a dataset whose groups hold real and fake faces together "
                    "(metadata.csv with a group column, e.g. dfdc-faces); this one has none")


def real_fake_pairs(labels, groups) -> np.ndarray:
    """(P, 2) indices [real, fake] of faces that share a group (`dfdc-faces`: a real video and the fake
    made from it), matched within each group in index order; faces left without a partner in their
    group (more reals than fakes, or the other way round) are not in any pair."""
    by_group: dict[str, tuple[list[int], list[int]]] = {}
    for i, (label, group) in enumerate(zip(np.asarray(labels), groups)):
        by_group.setdefault(group, ([], []))[int(label)].append(i)
    pairs = [pair for reals, fakes in by_group.values() for pair in zip(reals, fakes)]
    return np.array(pairs, np.int64).reshape(-1, 2)


class PairedSampler(Sampler):
    """Training indices drawn as real/fake pairs (`real_fake_pairs`), the two faces of a pair next to
    each other, so that (with an even batch size) every batch holds both halves of each pair it holds.

    Why: a fake in `dfdc-faces` shows the same scene as its real video with the face swapped, so a
    batch that holds both asks the model for the one thing that differs, the manipulation, while the
    scene, the person and the camera are given twice with opposite labels; randomly drawn batches let
    it lean on whatever separates these particular training videos (docs/training.md, session 34).
    Each epoch draws `num_samples // 2` pairs without replacement (seeded by `generator`); under
    DistributedDataParallel each of `world` ranks takes every `world`-th pair."""

    def __init__(self, pairs: np.ndarray, num_samples: int, generator: torch.Generator | None = None,
                 rank: int = 0, world: int = 1):
        if len(pairs) == 0:
            raise ValueError(NO_PAIRS_MESSAGE)
        self.pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        self.n_pairs = min(num_samples // 2, len(self.pairs)) // world
        self.generator, self.rank, self.world = generator, rank, world

    def __iter__(self):
        order = torch.randperm(len(self.pairs), generator=self.generator).numpy()
        chosen = self.pairs[order[self.rank::self.world][:self.n_pairs]]
        return iter(chosen.reshape(-1).tolist())

    def __len__(self) -> int:
        return 2 * self.n_pairs


class FaceCropDataset(Dataset):
    """(normalised image tensor, float label) pairs from a CachedSplit; optional self-blended fakes.

    With `views` > 1 each item is the same face augmented `views` times (a tensor of shape
    (views, C, H, W)), so that training can ask the model to score the views alike: independently
    (`view_difference="all"`), or with every augmentation shared but the box jitter and its resize
    filter (`"framing"`: the views are one upload cut as two detector boxes, what the re-cut and
    re-framing checks measure, and a consistency term then asks for exactly that invariance), or with
    everything shared, the box too, except that every view after the first moves that box by up to
    `NUDGE_PX` pixels of the model's input in position and side (`"nudge"`: two pipelines whose boxes
    land a pixel apart, what `make bench`'s per-face agreement measures)."""

    NUDGE_PX = 1.0

    def __init__(self, split: CachedSplit, transform, sbi_probability: float = 0.0, seed: int = 0,
                 teacher_logits: np.ndarray | None = None, views: int = 1, view_difference: str = "all"):
        self.split = split
        self.transform = transform
        self.views = views
        if view_difference not in ("all", "framing", "nudge"):
            raise ValueError(f"view_difference must be 'all', 'framing' or 'nudge', not {view_difference!r}")
        self.view_difference = view_difference
        self.box_jitter = next((t for t in getattr(transform, "transforms", []) if isinstance(t, BoxJitter)), None)
        if view_difference != "all" and self.box_jitter is None:
            raise ValueError(f"{view_difference!r} views need a transform with a BoxJitter")
        self.sbi_probability = sbi_probability
        self.seed = seed
        self.epoch = 0
        self.teacher_logits = teacher_logits

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int):
        image = self.split.images[index]
        label = float(self.split.labels[index])
        teacher = float(self.teacher_logits[index]) if self.teacher_logits is not None else math.nan
        if self.sbi_probability > 0 and label == 0.0:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            if rng.random() < self.sbi_probability:
                image, label, teacher = self_blend(image, rng), 1.0, math.nan
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if self.views > 1 and self.view_difference != "all":
            return self._framing_views(tensor, index), torch.tensor(label), torch.tensor(teacher)
        if self.views > 1:
            views = torch.stack([self.transform(tensor) for _ in range(self.views)])
            return views, torch.tensor(label), torch.tensor(teacher)
        return self.transform(tensor), torch.tensor(label), torch.tensor(teacher)

    def _framing_views(self, tensor: torch.Tensor, index: int) -> torch.Tensor:
        """The transform run `views` times from one state of torch's generator (same flip, colour,
        JPEG and blur), with the box jitter drawn from a generator of this item and epoch (so a
        resumed run draws the same boxes). "framing" draws a box per view from it; "nudge" draws one
        box for all views and moves it by a pixel or less for every view after the first."""
        item_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        state = torch.get_rng_state()
        self.box_jitter.generator = torch.Generator().manual_seed(item_seed)
        nudges = torch.empty(self.views, 3).uniform_(
            -self.NUDGE_PX, self.NUDGE_PX, generator=torch.Generator().manual_seed(item_seed + 1))
        try:
            views = []
            for v in range(self.views):
                torch.set_rng_state(state)
                if self.view_difference == "nudge":
                    self.box_jitter.generator.manual_seed(item_seed)          # the same box again
                    self.box_jitter.nudge = tuple(nudges[v].tolist()) if v else None
                views.append(self.transform(tensor))
        finally:
            self.box_jitter.generator = None
            self.box_jitter.nudge = None
        return torch.stack(views)
