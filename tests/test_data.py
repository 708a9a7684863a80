"""Synthetic dataset, ImageFolder, DataLoader and transforms."""

import hashlib
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data import DataLoader, ImageFolder, SplitError
from data.builtin import CLASS_NAMES, make_synthetic_imagefolder, render_image
from data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ColorJitter, RandomHorizontalFlip,
                               RandomResizedCrop, crops_144, eval_resize_size, eval_transform,
                               resize_shorter, ten_crop, to_array, train_transform)


def _tree_digest(root):
    """{relative path: sha256} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------
# Synthetic dataset
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_imagefolder(str(root), num_classes=4, train_per_class=6,
                                      val_per_class=3, image_size=32, seed=3)


def test_synthetic_layout(synth):
    for split, count in (("train", 6), ("val", 3)):
        classes = sorted(os.listdir(os.path.join(synth, split)))
        assert classes == sorted(CLASS_NAMES[:4])
        for c in classes:
            files = os.listdir(os.path.join(synth, split, c))
            assert len(files) == count
            with Image.open(os.path.join(synth, split, c, files[0])) as img:
                assert img.size == (32, 32) and img.mode == "RGB"
    with open(os.path.join(synth, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["status"] == "complete" and manifest["seed"] == 3


def test_synthetic_same_seed_same_bytes(synth, tmp_path):
    again = make_synthetic_imagefolder(str(tmp_path / "again"), num_classes=4, train_per_class=6,
                                       val_per_class=3, image_size=32, seed=3)
    assert _tree_digest(again) == _tree_digest(synth)
    other = make_synthetic_imagefolder(str(tmp_path / "other"), num_classes=4, train_per_class=6,
                                       val_per_class=3, image_size=32, seed=4)
    a, b = _tree_digest(other), _tree_digest(synth)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) >= len(a) - 1  # all images differ (not the manifest)


def test_synthetic_images_drawn_by_several_processes_are_each_images_own(tmp_path):
    """Enough images that generation is shared among processes: every file still holds
    exactly what render_image draws from that image's own seed."""
    root = make_synthetic_imagefolder(str(tmp_path / "big"), num_classes=2, train_per_class=150,
                                      val_per_class=1, image_size=16, seed=3)
    for split_id, split, class_id, i in [(0, "train", 0, 0), (0, "train", 1, 149),
                                         (0, "train", 0, 61), (1, "val", 1, 0)]:
        name = CLASS_NAMES[class_id]
        path = os.path.join(root, split, name, f"{name}_{i:05d}.png")
        expected = render_image(name, 16, np.random.default_rng([3, split_id, class_id, i]))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(expected))
    assert len(os.listdir(os.path.join(root, "train", CLASS_NAMES[1]))) == 150


def test_synthetic_reuse_and_regenerate(tmp_path):
    root = str(tmp_path / "d")
    kw = dict(num_classes=3, train_per_class=2, val_per_class=1, image_size=16, seed=0)
    make_synthetic_imagefolder(root, **kw)
    png = os.path.join(root, "train", CLASS_NAMES[0], f"{CLASS_NAMES[0]}_00000.png")
    first = os.stat(png).st_mtime_ns
    os.utime(png, ns=(first - 10**9, first - 10**9))  # mark: a rewrite would change it
    marked = os.stat(png).st_mtime_ns
    make_synthetic_imagefolder(root, **kw)
    assert os.stat(png).st_mtime_ns == marked  # reused, not rewritten

    # A missing file makes the dataset incomplete: it is regenerated.
    os.remove(os.path.join(root, "val", CLASS_NAMES[1], f"{CLASS_NAMES[1]}_00000.png"))
    make_synthetic_imagefolder(root, **kw)
    assert os.stat(png).st_mtime_ns != marked
    assert len(os.listdir(os.path.join(root, "val", CLASS_NAMES[1]))) == 1

    # Different parameters: regenerated with the new counts, and a class removed is gone.
    make_synthetic_imagefolder(root, **dict(kw, num_classes=2, train_per_class=3))
    assert sorted(os.listdir(os.path.join(root, "train"))) == sorted(CLASS_NAMES[:2])
    assert len(os.listdir(os.path.join(root, "train", CLASS_NAMES[0]))) == 3


def test_synthetic_refuses_foreign_data(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="refusing"):
        make_synthetic_imagefolder(str(tmp_path), num_classes=2, train_per_class=1,
                                   val_per_class=1, image_size=16)
    assert (tmp_path / "train" / "cats" / "a.png").exists()


def test_synthetic_prefix_stable():
    # Image i of a class depends only on (seed, split, class, i), not on the counts.
    a = render_image("ring", 24, np.random.default_rng([0, 0, 5, 7]))
    b = render_image("ring", 24, np.random.default_rng([0, 0, 5, 7]))
    assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# ImageFolder
# ---------------------------------------------------------------------------------------------

def _write_png(path, colour=(10, 20, 30), size=(20, 16)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagefolder_classes_and_samples(synth):
    ds = ImageFolder(synth, "train")
    assert ds.classes == sorted(CLASS_NAMES[:4])
    assert len(ds) == 24
    assert list(ds.targets) == sorted(ds.targets)
    img, label = ds[7]
    assert img.mode == "RGB" and label == 1
    val = ImageFolder(synth, "val", classes=ds.classes)
    assert val.class_to_idx == ds.class_to_idx


def test_imagefolder_cache_decodes_each_file_once_and_hands_out_copies(synth, monkeypatch):
    import data.folder as folder
    reads = []
    real = folder.load_image
    monkeypatch.setattr(folder, "load_image", lambda p, m: reads.append(p) or real(p, m))
    plain, cached = ImageFolder(synth, "train"), ImageFolder(synth, "train", cache=True)
    for _ in range(3):
        for i in (0, 7, 23):
            a, b = plain[i], cached[i]
            assert a[1] == b[1] and np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert len(reads) == 9 + 3                  # uncached: every time; cached: once each
    img, _ = cached[7]
    img.paste((255, 0, 0), (0, 0, img.size[0], img.size[1]))
    assert np.array_equal(np.asarray(cached[7][0]), np.asarray(plain[7][0]))


def test_imagefolder_extensions_case_insensitive(tmp_path):
    _write_png(str(tmp_path / "b" / "x.PNG"))
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(str(tmp_path / "a" / "y.JPeG"), format="JPEG")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"")
    ds = ImageFolder(str(tmp_path))
    assert ds.classes == ["a", "b"]
    assert [os.path.basename(p) for p, _ in ds.samples] == ["y.JPeG", "x.PNG"]
    assert list(ds.targets) == [0, 1]


def test_imagefolder_errors(tmp_path):
    with pytest.raises(SplitError, match="split folder 'train' not found"):
        ImageFolder(str(tmp_path), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(SplitError, match="no class folders"):
        ImageFolder(str(tmp_path), "train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "readme.txt").write_text("hi")
    with pytest.raises(SplitError, match="no images") as e:
        ImageFolder(str(tmp_path), "train")
    assert str(tmp_path / "train" / "cat") in str(e.value)
    assert isinstance(e.value, ValueError)
    _write_png(str(tmp_path / "train" / "dog" / "1.png"))
    with pytest.raises(SplitError, match="not in the class list"):
        ImageFolder(str(tmp_path), "train", classes=["cat"])
    # With an imposed class list, an empty class folder is fine.
    ds = ImageFolder(str(tmp_path), "train", classes=["cat", "dog"])
    assert len(ds) == 1 and ds.samples[0][1] == 1


# ---------------------------------------------------------------------------------------------
# DataLoader
# ---------------------------------------------------------------------------------------------

def _batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.copy(), y.copy()) for x, y in loader]


def test_loader_shapes_and_len(synth):
    ds = ImageFolder(synth, "train")
    loader = DataLoader(ds, batch_size=5, transform=eval_transform(24))
    out = list(loader)
    assert len(loader) == len(out) == 5
    assert [len(y) for _, y in out] == [5, 5, 5, 5, 4]
    x, y = out[0]
    assert x.shape == (5, 3, 24, 24) and x.dtype == np.float32 and y.dtype == np.int64
    assert len(DataLoader(ds, 5, drop_last=True)) == 4
    assert [len(y) for _, y in DataLoader(ds, 5, drop_last=True,
                                          transform=eval_transform(16))] == [5] * 4
    # No shuffle: labels come in dataset order.
    assert np.concatenate([y for _, y in out]).tolist() == ds.targets.tolist()


def test_loader_workers_match_inline(synth):
    ds = ImageFolder(synth, "train")
    kw = dict(batch_size=4, shuffle=True, transform=train_transform(20), seed=11)
    inline = DataLoader(ds, workers=0, **kw)
    pooled = DataLoader(ds, workers=2, prefetch=1, **kw)
    for epoch in (0, 1):
        a, b = _batches(inline, epoch), _batches(pooled, epoch)
        assert len(a) == len(b) == 6
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)
    # Epochs differ in order; the same epoch repeats exactly.
    e0, e1 = _batches(inline, 0), _batches(inline, 1)
    assert not np.array_equal(np.concatenate([y for _, y in e0]),
                              np.concatenate([y for _, y in e1]))
    again = _batches(inline, 0)
    for (xa, ya), (xb, yb) in zip(e0, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # A shuffled epoch still visits every sample once.
    assert sorted(np.concatenate([y for _, y in e1]).tolist()) == sorted(ds.targets.tolist())


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_skips_corrupt_files(tmp_path, capsys, workers):
    for i in range(4):
        _write_png(str(tmp_path / "a" / f"{i}.png"), colour=(i * 40, 0, 0))
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), np.uint8))
    noisy.save(str(tmp_path / "a" / "1.png"))
    data = (tmp_path / "a" / "1.png").read_bytes()
    (tmp_path / "a" / "1.png").write_bytes(data[:len(data) // 2])  # truncated inside the pixels
    (tmp_path / "a" / "bad.jpg").write_bytes(os.urandom(300))        # not an image at all
    ds = ImageFolder(str(tmp_path))
    loader = DataLoader(ds, batch_size=2, workers=workers, transform=eval_transform(8))
    sizes = [len(y) for _, y in loader]
    # Order: 0.png 1.png | 2.png 3.png | bad.jpg -> the first batch shrinks, the last vanishes.
    assert sizes == [1, 2]
    assert sorted(os.path.basename(p) for p in loader.skipped) == ["1.png", "bad.jpg"]
    err = capsys.readouterr().err
    assert "1.png" in err and "bad.jpg" in err
    # Reported once: a second epoch neither warns again nor grows the list.
    loader.set_epoch(1)
    assert [len(y) for _, y in loader] == [1, 2]
    assert len(loader.skipped) == 2
    assert "warning" not in capsys.readouterr().err


class _Exploding:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == 5:
            raise RuntimeError("boom in sample 5")
        return Image.new("RGB", (8, 8)), 0


def test_loader_worker_error_propagates_and_cleans_up():
    import multiprocessing as mp
    loader = DataLoader(_Exploding(12), batch_size=2, workers=2)
    with pytest.raises(RuntimeError, match="boom in sample 5"):
        list(loader)
    assert mp.active_children() == []


def test_loader_early_break_stops_workers(synth):
    import multiprocessing as mp
    loader = DataLoader(ImageFolder(synth, "train"), batch_size=2, workers=2,
                        transform=eval_transform(16))
    for k, _ in enumerate(loader):
        if k == 1:
            break
    import gc
    gc.collect()
    assert mp.active_children() == []


def test_loader_interrupt_in_consumer_stops_workers(synth):
    import multiprocessing as mp
    loader = DataLoader(ImageFolder(synth, "train"), batch_size=2, workers=2,
                        transform=eval_transform(16))
    with pytest.raises(KeyboardInterrupt):
        for _ in loader:
            raise KeyboardInterrupt
    import gc
    gc.collect()
    assert mp.active_children() == []


def test_loader_pipe_fallback_matches_inline(synth, monkeypatch, tmp_path):
    import data.loader as data
    ds = ImageFolder(synth, "val")
    kw = dict(batch_size=4, shuffle=True, transform=train_transform(16), seed=9)
    a = list(DataLoader(ds, **kw))
    monkeypatch.setattr(data, "_shm_root", lambda: None)  # no /dev/shm: batches are pickled
    b = list(DataLoader(ds, workers=2, **kw))
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # A file system that refuses the write (full, missing) also falls back to the pipe.
    images = [np.ones((3, 2, 2), np.float32), np.zeros((3, 2, 2), np.float32)]
    packed = data._pack_images(images, str(tmp_path / "missing"), 0)
    assert packed[0] == "array" and packed[1].shape == (2, 3, 2, 2)
    packed = data._pack_images(images, str(tmp_path), 1)
    assert packed[0] == "file"
    x = data._unpack_images(packed)
    np.testing.assert_array_equal(x, np.stack(images))
    assert list(tmp_path.iterdir()) == []  # the name is gone once mapped
    with pytest.raises(ValueError, match="different shapes"):
        data._pack_images([np.ones((3, 2, 2), np.float32), np.ones((3, 2, 3), np.float32)],
                          None, 2)


def test_loader_spawn_matches_inline(synth):
    ds = ImageFolder(synth, "val")
    kw = dict(batch_size=5, shuffle=True, transform=train_transform(16), seed=2)
    a = list(DataLoader(ds, **kw))
    b = list(DataLoader(ds, workers=1, start_method="spawn", **kw))
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

@settings(deadline=None, max_examples=60)
@given(w=st.integers(8, 400), h=st.integers(8, 400), seed=st.integers(0, 2**32 - 1))
def test_random_resized_crop_bounds(w, h, seed):
    t = RandomResizedCrop(16)
    rng = np.random.default_rng(seed)
    for _ in range(20):
        box = t.get_params(w, h, rng)
        left, top, cw, ch = box
        assert 0 <= left and 0 <= top and left + cw <= w and top + ch <= h and cw > 0 < ch
        frac, ar = cw * ch / (w * h), cw / ch
        if not (0.08 <= frac <= 1.0 and 3 / 4 <= ar <= 4 / 3):
            # Only the centre-crop fallback may leave the bounds: a very elongated image has
            # no crop of 8% area with a near-square aspect.  Its aspect is clamped, up to
            # rounding to whole pixels.
            assert box == t.fallback_box(w, h)
            assert 3 / 4 - 1 / ch <= ar <= 4 / 3 + 1 / ch


def test_random_resized_crop_statistics():
    t = RandomResizedCrop(16)
    rng = np.random.default_rng(0)
    boxes = np.array([t.get_params(300, 200, rng) for _ in range(2000)])
    frac = boxes[:, 2] * boxes[:, 3] / 60000
    ar = boxes[:, 2] / boxes[:, 3]
    assert frac.min() >= 0.08 and frac.max() <= 1.0
    assert ar.min() >= 3 / 4 and ar.max() <= 4 / 3
    # Log-uniform aspect: as many crops wider than square as taller.
    assert abs(np.mean(np.log(ar))) < 0.05
    img = Image.new("RGB", (300, 200))
    assert t(img, rng).size == (16, 16)


def test_random_resized_crop_fallback_centre():
    # A 1000x10 strip: no 8%-100% crop with aspect <= 4/3 fits, so the fallback is used.
    t = RandomResizedCrop(8)
    left, top, w, h = t.get_params(1000, 10, np.random.default_rng(0))
    assert (w, h) == (13, 10) and top == 0 and left == (1000 - 13) // 2


def test_random_interpolation_uses_all_four():
    # Whole-image crops isolate the interpolation choice: each output must equal one of the
    # four reference resizes, and each should be picked about a quarter of the time.
    img = render_image("checkerboard", 40, np.random.default_rng(0))
    t = RandomResizedCrop(17, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    refs = [np.asarray(img.resize((17, 17), m)) for m in t.interpolations]
    assert len({r.tobytes() for r in refs}) == 4
    counts = [0] * 4
    rng = np.random.default_rng(2)
    for _ in range(200):
        out = np.asarray(t(img, rng))
        counts[[k for k in range(4) if np.array_equal(out, refs[k])][0]] += 1
    assert min(counts) > 30, counts


def test_flip():
    arr = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3
    img = Image.fromarray(arr)
    always, never = RandomHorizontalFlip(1.0), RandomHorizontalFlip(0.0)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(np.asarray(always(img, rng)), arr[:, ::-1])
    np.testing.assert_array_equal(np.asarray(never(img, rng)), arr)
    chw = to_array(img)
    np.testing.assert_array_equal(always(chw, rng), chw[:, :, ::-1])
    flips = sum(RandomHorizontalFlip()(img, rng) is not img for _ in range(400))
    assert 150 < flips < 250


def test_to_array_normalisation():
    img = Image.new("RGB", (5, 3), (255, 0, 128))
    x = to_array(img)
    assert x.shape == (3, 3, 5) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(x[:, 1, 2], expected, rtol=1e-6)
    y = to_array(img, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(y[:, 0, 0], [1.0, 0.0, 128 / 255], rtol=1e-6)


def test_color_jitter_keeps_size_and_varies():
    img = render_image("circle", 32, np.random.default_rng(0))
    t = ColorJitter()
    outs = [np.asarray(t(img, np.random.default_rng(s))) for s in range(3)]
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert not np.array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], np.asarray(t(img, np.random.default_rng(0))))


def test_train_transform_output():
    img = render_image("stripes", 48, np.random.default_rng(0))
    x = train_transform(32)(img, np.random.default_rng(5))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32


@pytest.mark.parametrize("wh", [(100, 60), (60, 100), (50, 50)])
def test_eval_transform_size(wh):
    img = Image.new("RGB", wh, (1, 2, 3))
    x = eval_transform(32)(img, None)
    assert x.shape == (3, 32, 32)
    assert eval_resize_size(224) == 256 and eval_resize_size(32) == 36
    assert min(resize_shorter(img, 36).size) == 36


def _coord_image(w, h):
    """An image whose pixel (x, y) encodes its own coordinates: R = x, G = y."""
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8))


def _decode(crop):
    """(3, S, S) normalised crop -> pixel values (R, G) as integers."""
    raw = crop * np.asarray(IMAGENET_STD, np.float32)[:, None, None] + \
        np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]
    return np.rint(raw[:2] * 255).astype(int)


def test_ten_crop():
    size = 28  # shorter side int(28 * 256 / 224) = 32: the 40x32 image is not resized
    img = _coord_image(40, 32)
    crops = ten_crop(img, size)
    assert crops.shape == (10, 3, size, size) and crops.dtype == np.float32
    r, g = _decode(crops[4])  # centre: offset ((40 - 28) // 2, (32 - 28) // 2) = (6, 2)
    assert r[0, 0] == 6 and g[0, 0] == 2 and r[-1, -1] == 6 + size - 1
    r, g = _decode(crops[3])  # bottom right
    assert (r[0, 0], g[0, 0]) == (12, 4)
    np.testing.assert_array_equal(crops[5:], crops[:5, :, :, ::-1])


def test_crops_144():
    size = 28  # scales 256, 288, 320, 352 x 28/224 -> shorter sides 32, 36, 40, 44
    img = _coord_image(64, 32)
    crops = crops_144(img, size)
    assert crops.shape == (144, 3, size, size) and crops.dtype == np.float32
    # First scale leaves the image as is; squares 32x32 at x = 0, 16, 32.  Per square: 4 corners,
    # centre, whole square resized, then the six mirrored.  Centre crop of the middle square:
    r, g = _decode(crops[12 + 4])
    assert (r[0, 0], g[0, 0]) == (16 + 2, 2)
    assert (r[-1, -1], g[-1, -1]) == (16 + 2 + size - 1, 2 + size - 1)
    r, g = _decode(crops[24 + 3])  # bottom-right corner of the right square
    assert (r[-1, -1], g[-1, -1]) == (63, 31)
    np.testing.assert_array_equal(crops[6:12], crops[0:6, :, :, ::-1])
    # Portrait images use top/middle/bottom squares.
    tall = crops_144(_coord_image(32, 64), size)
    r, g = _decode(tall[12 + 4])
    assert (r[0, 0], g[0, 0]) == (2, 16 + 2)
    # Default size: the paper's 224 crops from 256..352 shorter sides.
    assert crops_144(Image.new("RGB", (300, 256)), 224).shape == (144, 3, 224, 224)
