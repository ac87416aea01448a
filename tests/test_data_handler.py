"""Dataset reading, grouped splits, transforms, self-blended fakes, bad files."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import data_handler
from registry import get_spec


def _write(path, value=128, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_folder_layout_at_any_depth_gets_a_grouped_split(tmp_path):
    for i in range(30):
        _write(tmp_path / "real" / "a" / "b" / f"r{i}.jpg")
        _write(tmp_path / "fake" / f"f{i}.png")
    records = data_handler.load_records(tmp_path, seed=1)
    assert len(records) == 60 and records["label"].sum() == 30
    assert set(records["split"]) == {"train", "val", "test"}
    again = data_handler.load_records(tmp_path, seed=1)
    assert records["split"].tolist() == again["split"].tolist()  # seeded


def test_grouped_split_keeps_each_group_in_one_split():
    groups = [f"g{i // 3}" for i in range(300)]
    splits = data_handler.grouped_split(groups, seed=0)
    frame = pd.DataFrame({"group": groups, "split": splits})
    assert frame.groupby("group")["split"].nunique().max() == 1
    share = frame["split"].value_counts(normalize=True)
    assert 0.7 < share["train"] < 0.9


def test_manifest_split_is_used(tmp_path):
    for i in range(4):
        _write(tmp_path / "img" / f"{i}.jpg")
    pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(4)], "label": ["real", "fake", "real", "fake"],
                  "group": ["a", "a", "b", "b"], "split": ["train", "train", "test", "test"]}
                 ).to_csv(tmp_path / "metadata.csv", index=False)
    records = data_handler.load_records(tmp_path / "metadata.csv")
    assert records["split"].tolist() == ["train", "train", "test", "test"]
    assert records["label"].tolist() == [0, 1, 0, 1]


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    for i in range(6):
        _write(tmp_path / "real" / f"r{i}.jpg")
        _write(tmp_path / "fake" / f"f{i}.jpg")
    (tmp_path / "fake" / "f0.jpg").write_bytes(b"not an image")
    records = data_handler.load_records(tmp_path)
    records["split"] = "train"
    split = data_handler.load_split(records, "train", 16, cache_dir=tmp_path / "cache")
    assert split.skipped == 1 and len(split.labels) == 11 and split.images.shape == (11, 16, 16, 3)
    assert "skipped 1 unreadable" in caplog.text


def test_transforms_give_model_sized_normalised_tensors():
    spec = get_spec("xception")
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)
    for transform in (data_handler.train_transform(96, spec.mean, spec.std),
                      data_handler.eval_transform(96, spec.mean, spec.std)):
        out = transform(image)
        assert out.shape == (3, 96, 96) and out.dtype == torch.float32
        assert -1.01 <= float(out.min()) and float(out.max()) <= 1.01  # mean = std = 0.5


def test_self_blended_fake_changes_the_face_inside_only():
    rng = np.random.default_rng(0)
    face = (np.random.default_rng(1).random((128, 128, 3)) * 255).astype(np.uint8)
    blended = data_handler.self_blend(face, rng)
    diff = np.abs(blended.astype(int) - face.astype(int)).sum(axis=2)
    assert diff[40:90, 40:90].mean() > 5          # the inner face changed
    assert diff[:4, :4].mean() < diff[40:90, 40:90].mean() / 4  # the corners barely


def test_sbi_relabels_some_reals_as_fake():
    images = np.random.default_rng(0).integers(0, 255, (40, 64, 64, 3), dtype=np.uint8)
    split = data_handler.CachedSplit(images, np.zeros(40, np.int64), [str(i) for i in range(40)],
                                     [str(i) for i in range(40)], 0)
    ds = data_handler.FaceCropDataset(split, data_handler.eval_transform(64, (0.5,) * 3, (0.5,) * 3),
                                      sbi_probability=0.5)
    labels = [float(ds[i][1]) for i in range(40)]
    assert 8 <= sum(labels) <= 32


def test_box_jitter_recuts_like_a_detector_and_keeps_size_and_type():
    import torch

    from data_handler import BoxJitter
    torch.manual_seed(0)
    image = torch.arange(64 * 64, dtype=torch.int64).reshape(1, 64, 64).remainder(251).to(torch.uint8).repeat(3, 1, 1)
    still = BoxJitter(64, shift=0.0, scale=0.0)(image)
    assert still.shape == (3, 64, 64) and still.dtype == torch.uint8
    assert torch.equal(still, image)                       # no jitter, same size: the crop itself
    jitter = BoxJitter(48, shift=0.08, scale=0.10)
    outs = [jitter(image) for _ in range(20)]
    assert all(o.shape == (3, 48, 48) and o.dtype == torch.uint8 for o in outs)
    assert len({o.float().mean().item() for o in outs}) > 10  # every call cuts another box


def test_warmup_rises_linearly_to_the_target():
    from training_engine import warmup_lr
    assert warmup_lr(1e-3, 0, 100) == pytest.approx(1e-5)
    assert warmup_lr(1e-3, 49, 100) == pytest.approx(5e-4)
    assert warmup_lr(1e-3, 99, 100) == warmup_lr(1e-3, 500, 100) == 1e-3
    assert warmup_lr(1e-3, 0, 0) == 1e-3


def test_two_views_of_a_face_are_augmented_independently():
    import torch

    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)
    split = data_handler.CachedSplit(images, np.array([0, 1, 0, 1]), [str(i) for i in range(4)],
                                     [str(i) for i in range(4)], 0)
    transform = data_handler.train_transform(48, (0.5,) * 3, (0.5,) * 3)
    torch.manual_seed(0)
    views, label, _ = data_handler.FaceCropDataset(split, transform, views=2)[1]
    assert views.shape == (2, 3, 48, 48) and float(label) == 1.0
    assert not torch.equal(views[0], views[1])             # two draws of the augmentation, not a copy
    single, _, _ = data_handler.FaceCropDataset(split, transform)[1]
    assert single.shape == (3, 48, 48)                      # one view keeps the old shape


def test_random_erasing_blanks_one_rectangle_to_the_mean_colour_only_when_asked():
    """--erase P: with P = 1 every training face has one axis-aligned rectangle set to 0, which after
    Normalize is the mean colour; without it no face has such a block (bright noise never normalises
    to exactly 0 over a rectangle)."""
    import torch

    images = np.random.default_rng(2).integers(150, 255, (8, 64, 64, 3), dtype=np.uint8)
    split = data_handler.CachedSplit(images, np.zeros(8), [str(i) for i in range(8)], [str(i) for i in range(8)], 0)

    def blanked_boxes(erase):
        torch.manual_seed(0)
        dataset = data_handler.FaceCropDataset(split, data_handler.train_transform(48, (0.5,) * 3, (0.5,) * 3, erase))
        boxes = []
        for i in range(8):
            zero = (dataset[i][0] == 0).all(dim=0)             # pixels blanked in every channel
            rows, cols = zero.any(dim=1).nonzero(), zero.any(dim=0).nonzero()
            if len(rows):
                box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
                boxes.append((bool(box.all()), box.numel() / zero.numel()))
        return boxes

    erased = blanked_boxes(1.0)
    assert len(erased) == 8 and all(is_rectangle and 0.01 < share < 0.5 for is_rectangle, share in erased)
    assert blanked_boxes(0.0) == []
    assert not any(isinstance(t, v2.RandomErasing)              # off by default: not even a p=0 step
                   for t in data_handler.train_transform(48, (0.5,) * 3, (0.5,) * 3).transforms)


def test_framing_views_share_every_augmentation_but_the_box():
    """--views-differ framing: one upload cut as two detector boxes (same flip, colour, JPEG, blur)."""
    import torch

    rng = np.random.default_rng(1)
    images = rng.integers(0, 40, (24, 64, 64, 3), dtype=np.uint8)
    images[:, :, :32] += 180                                 # bright left half: a flip shows
    split = data_handler.CachedSplit(images, np.zeros(24), [str(i) for i in range(24)],
                                     [str(i) for i in range(24)], 0)
    transform = data_handler.train_transform(48, (0.5,) * 3, (0.5,) * 3)

    def flipped(view):
        return bool(view[:, :, :24].mean() < view[:, :, 24:].mean())

    torch.manual_seed(0)
    framing = data_handler.FaceCropDataset(split, transform, views=2, view_difference="framing")
    independent = data_handler.FaceCropDataset(split, transform, views=2)
    pairs = [framing[i][0] for i in range(24)]
    assert all(flipped(a) == flipped(b) for a, b in pairs)                      # the same flip
    assert sum(flipped(a) for a, _ in pairs) not in (0, 24)                     # and flips do happen
    assert all(not torch.equal(a, b) for a, b in pairs)                         # but two boxes
    brightness_gap = np.mean([abs(float(a.mean() - b.mean())) for a, b in pairs])
    others = [independent[i][0] for i in range(24)]
    assert any(flipped(a) != flipped(b) for a, b in others)
    assert brightness_gap < np.mean([abs(float(a.mean() - b.mean())) for a, b in others]) / 2
    # The boxes are the item's and the epoch's (flip and colour come from torch's global generator):
    # with that generator in the same state, the same pair again; in the next epoch, other boxes.
    torch.manual_seed(5)
    again = framing[3][0]
    torch.manual_seed(5)
    assert torch.equal(framing[3][0], again)
    framing.set_epoch(1)
    torch.manual_seed(5)
    assert not torch.equal(framing[3][0], again)
    assert framing.box_jitter.generator is None             # single views draw from torch's generator again
    with pytest.raises(ValueError):
        data_handler.FaceCropDataset(split, data_handler.eval_transform(48, (0.5,) * 3, (0.5,) * 3), views=2,
                                     view_difference="framing")


def test_nudge_views_cut_the_same_box_a_pixel_apart():
    """--views-differ nudge: everything shared, the box too, but moved by up to a pixel of the model's
    input; so the views differ far less than framing views (two boxes) and are never the other's mirror."""
    import torch

    # Smooth images (a slow ramp and wave), so that how far a box moves shows in how much the cut changes.
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    phases = np.random.default_rng(2).uniform(0, 2 * np.pi, 16)
    images = np.stack([np.repeat((100 + 1.5 * xx + 40 * np.sin(yy / 6 + p))[..., None], 3, axis=2)
                       for p in phases]).clip(0, 255).astype(np.uint8)
    split = data_handler.CachedSplit(images, np.zeros(16), [str(i) for i in range(16)],
                                     [str(i) for i in range(16)], 0)
    transform = data_handler.train_transform(48, (0.5,) * 3, (0.5,) * 3)
    nudge = data_handler.FaceCropDataset(split, transform, views=2, view_difference="nudge")
    framing = data_handler.FaceCropDataset(split, transform, views=2, view_difference="framing")

    def gaps(dataset):
        torch.manual_seed(0)
        return [float((v[0] - v[1]).abs().mean()) for v in (dataset[i][0] for i in range(16))]

    nudged, framed = gaps(nudge), gaps(framing)
    assert max(nudged) > 0                                   # the box does move
    assert np.mean(nudged) < np.mean(framed) / 2             # but by far less than a second box
    assert nudge.box_jitter.nudge is None and nudge.box_jitter.generator is None
    # With no nudge allowed, the views are the same image: everything else is shared.
    nudge.NUDGE_PX = 0.0
    torch.manual_seed(0)
    same = nudge[5][0]
    assert torch.equal(same[0], same[1])


def test_paired_sampler_puts_each_real_next_to_the_fake_of_its_group():
    from data_handler import PairedSampler, real_fake_pairs
    # groups g0..g5 each hold one real and one fake, in scrambled order; g6 has a real only, g7 two fakes
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1])
    groups = ["g0", "g0", "g1", "g2", "g1", "g2", "g3", "g3", "g4", "g4", "g5", "g5", "g6", "g7", "g7"]
    pairs = real_fake_pairs(labels, groups)
    assert len(pairs) == 6 and (labels[pairs[:, 0]] == 0).all() and (labels[pairs[:, 1]] == 1).all()
    order = list(PairedSampler(pairs, num_samples=12, generator=torch.Generator().manual_seed(0)))
    assert len(order) == 12 and len(set(order)) == 12               # every pair once, nothing repeated
    for real, fake in zip(order[0::2], order[1::2]):
        assert groups[real] == groups[fake] and labels[real] == 0 and labels[fake] == 1
    assert 12 not in order and 13 not in order and 14 not in order  # no partner in their group: left out
    fewer = list(PairedSampler(pairs, num_samples=5, generator=torch.Generator().manual_seed(1)))
    assert len(fewer) == 4                                           # whole pairs only
    other = list(PairedSampler(pairs, num_samples=12, generator=torch.Generator().manual_seed(1)))
    assert other != order and sorted(other) == sorted(order)         # another epoch, another order
    ranks = [list(PairedSampler(pairs, 12, torch.Generator().manual_seed(0), rank=r, world=2))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6 and not set(ranks[0]) & set(ranks[1])


def test_paired_sampling_without_groups_that_hold_both_labels_is_refused():
    from data_handler import PairedSampler, real_fake_pairs
    pairs = real_fake_pairs(np.array([0, 1, 0, 1]), ["a", "b", "c", "d"])
    assert pairs.shape == (0, 2)
    with pytest.raises(ValueError, match="group"):
        PairedSampler(pairs, num_samples=4)
