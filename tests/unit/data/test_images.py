"""Tests for the embedded photos and the grain image pretraining pipeline."""

import dataclasses
import itertools
import json
import math

import ml_collections
import numpy as np
import pytest
from PIL import Image

from maskfeat_jax import defaults, masking
from maskfeat_jax.data import batching, embedded, images, skipping, sources, streams
from maskfeat_jax.data.batching import StreamOptions
from tests.support import tfds_fixture
from tests.support.batches import assert_batches_equal, take

SIZE, PATCH = 64, 16  # 4x4 token grid keeps the tests fast.
STREAM_FIELDS = {f.name for f in dataclasses.fields(StreamOptions)}


class ImageSpec:
    is_video, image_size = False, SIZE


def _gen():
    # 4x4 grid: num = round(16*0.4) = 6, min = 1, max = 6.
    return masking.BlockMaskGenerator(grid=(4, 4), ratio=0.4)


def _dataset(photos, **kw):
    """``kw``: ``StreamOptions`` fields and pipeline arguments, over the test defaults."""
    stream = dict(per_host_batch=4, seed=0, read_threads=2, prefetch_batches=2)
    args = dict(image_size=SIZE, patch_size=PATCH, mask_generator=_gen())
    for key, value in kw.items():
        (stream if key in STREAM_FIELDS else args)[key] = value
    return images.make_pretrain_dataset(photos, StreamOptions(**stream), **args)


def _batches_equal(a, b):
    return all(
        np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
        for x, y in zip(a, b)
    )


@pytest.fixture(scope="module")
def photos():
    # A few real photos of different sizes, gray and RGB, keep it quick.
    names = ("astronaut", "coffee", "camera", "page", "text", "china")
    return embedded.load_photos(names)


def _constant_photos(n):
    """Photo i is a constant image of value 10*i + 5 (sizes vary), so every
    augmented view still reveals which photo it came from."""
    return [np.full((40 + 7 * i, 90 - 5 * i, 3), 10 * i + 5, np.uint8) for i in range(n)]


def _indices(batch):
    img = batch["image"]
    # Constant inputs stay constant through crop, bicubic resize and flip.
    assert (img == img[:, :1, :1, :1]).all()
    return ((img[:, 0, 0, 0].astype(int) - 5) // 10).tolist()


# ---------------------------------------------------------------- embedded


def test_embedded_photos_are_real_rgb_uint8_in_fixed_order():
    assert len(embedded.PHOTO_NAMES) >= 20
    assert embedded.PHOTO_NAMES[:3] == ("astronaut", "chelsea", "coffee")
    assert embedded.PHOTO_NAMES[-2:] == ("china", "flower")
    photos = embedded.load_photos()
    assert len(photos) == len(embedded.PHOTO_NAMES)
    for name, p in zip(embedded.PHOTO_NAMES, photos):
        assert p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3, name
        assert min(p.shape[:2]) >= 150, name
        assert p.std() > 10, name  # real content, not a blank image
    assert embedded.load_photo("astronaut").shape == (512, 512, 3)
    assert embedded.load_photo("china").shape == (427, 640, 3)
    # Grayscale sources are replicated to 3 channels.
    cam = embedded.load_photo("camera")
    assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 1] == cam[..., 2]).all()
    # Cached: the same read-only array every time.
    assert embedded.load_photo("coffee") is embedded.load_photo("coffee")
    assert not embedded.load_photo("coffee").flags.writeable


def test_embedded_photos_match_library_loaders():
    skdata = pytest.importorskip("skimage.data")
    sk_datasets = pytest.importorskip("sklearn.datasets")
    np.testing.assert_array_equal(embedded.load_photo("astronaut"), skdata.astronaut())
    np.testing.assert_array_equal(embedded.load_photo("rocket"), skdata.rocket())
    np.testing.assert_array_equal(embedded.load_photo("coins")[..., 0], skdata.coins())
    np.testing.assert_array_equal(
        embedded.load_photo("flower"), sk_datasets.load_sample_image("flower.jpg")
    )


def test_embedded_split_is_deterministic_and_disjoint():
    train, val = embedded.split_names("train"), embedded.split_names("validation")
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(embedded.PHOTO_NAMES)
    assert len(val) == 3 and len(train) == len(embedded.PHOTO_NAMES) - 3
    assert train == tuple(n for n in embedded.PHOTO_NAMES if n not in val)
    assert len(embedded.load_split("validation")) == 3
    with pytest.raises(ValueError, match="unknown split"):
        embedded.split_names("test")


def test_embedded_missing_file_names_the_pinned_package(monkeypatch):
    monkeypatch.setitem(embedded._FILES, "gone", (embedded._SKIMAGE, "no_such_photo.png"))
    with pytest.raises(embedded.EmbeddedDataError, match=r"scikit-image==0\.26\.0"):
        embedded.photo_path("gone")
    monkeypatch.setitem(
        embedded._FILES, "nopkg", (("scikit-learn", "not_a_real_module_xyz", "d"), "x")
    )
    with pytest.raises(embedded.EmbeddedDataError, match=r"scikit-learn==1\.9\.1.*not installed"):
        embedded.photo_path("nopkg")
    with pytest.raises(KeyError, match="unknown embedded photo"):
        embedded.photo_path("lena")


# ---------------------------------------------------------------- crop


@pytest.mark.parametrize(
    "height, width, max_fallback",
    [
        (512, 512, 0.02),
        (427, 640, 0.05),
        (1411, 1411, 0.02),
        # Too wide to hold half its area at aspect <= 4/3: mostly centre crops.
        (172, 448, 1.0),
    ],
)
def test_crop_box_area_and_aspect_in_range(height, width, max_fallback):
    rng = np.random.default_rng(0)
    scale, ratio = (0.5, 1.0), (3 / 4, 4 / 3)
    fallback = images.center_crop_box(height, width, ratio)
    fractions, log_aspects, n_fallback = [], [], 0
    for _ in range(2000):
        top, left, h, w = images.sample_crop_box(rng, height, width, scale, ratio)
        assert 0 <= top and top + h <= height and 0 <= left
        assert left + w <= width and h > 0 and w > 0
        if (top, left, h, w) == fallback:
            n_fallback += 1
            continue
        # h, w are rounded: allow half a pixel on each side.
        area_lo = (h - 0.5) * (w - 0.5) / (height * width)
        area_hi = (h + 0.5) * (w + 0.5) / (height * width)
        assert area_lo <= scale[1] and area_hi >= scale[0]
        assert (w - 0.5) / (h + 0.5) <= ratio[1]
        assert (w + 0.5) / (h - 0.5) >= ratio[0]
        fractions.append(h * w / (height * width))
        log_aspects.append(math.log(w / h))
    assert n_fallback <= max_fallback * 2000
    if height == width:
        # Accepted boxes span the scale range; aspects are symmetric in log.
        assert min(fractions) < 0.52 and max(fractions) > 0.97
        assert abs(np.mean(log_aspects)) < 0.02
        assert min(log_aspects) < -0.2 and max(log_aspects) > 0.2


def test_crop_position_is_uniform_over_inclusive_range():
    rng = np.random.default_rng(1)
    # 10x10 image, fixed 5x5 box: top/left take each of 0..5 equally often.
    boxes = np.array(
        [images.sample_crop_box(rng, 10, 10, (0.25, 0.25), (1.0, 1.0)) for _ in range(1200)]
    )
    assert (boxes[:, 2:] == 5).all()
    for col in (0, 1):
        counts = np.bincount(boxes[:, col], minlength=6)
        assert len(counts) == 6 and (np.abs(counts - 200) < 60).all(), counts


def test_crop_fallback_is_centre_crop_with_clamped_aspect():
    rng = np.random.default_rng(0)
    # A wide strip cannot hold any square box with >= 90% of its area.
    box = images.sample_crop_box(rng, 100, 1000, scale=(0.9, 1.0), ratio=(1.0, 1.0))
    assert box == (0, 450, 100, 100)
    assert images.center_crop_box(1000, 100, (0.5, 2.0)) == (400, 0, 200, 100)
    assert images.center_crop_box(300, 400, (0.75, 4 / 3)) == (0, 0, 300, 400)


def test_random_resized_crop_output():
    rng = np.random.default_rng(0)
    photo = embedded.load_photo("astronaut")
    out = images.random_resized_crop(photo, rng, 48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    # Full-image crop equals a plain bicubic resize.
    from PIL import Image

    full = images.random_resized_crop(photo, rng, 48, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    ref = np.asarray(Image.fromarray(photo).resize((48, 48), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(full, ref)


def test_hflip_happens_about_half_the_time():
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    kw = dict(image_size=64, mask_generator=_gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = 0
    for i in range(200):
        out = images.PretrainTransform([ramp], hflip=True, **kw).random_map(
            0, np.random.default_rng(i)
        )
        flipped += int(out["image"][0, 0, 0] > out["image"][0, -1, 0])
        assert out["mask"].shape == (4, 4) and out["mask"].dtype == bool
    assert 70 < flipped < 130
    out = images.PretrainTransform([ramp], hflip=False, **kw).random_map(
        0, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(out["image"], ramp)


# ---------------------------------------------------------------- pipeline


def test_batch_shapes_dtypes_and_values(photos):
    batches = take(_dataset(photos, per_host_batch=8), 3)
    for b in batches:
        assert set(b) == {
            "image",
            "mask",
            "label",
            "skipped",
            "skipped_ids",
            "excluded",
            "excluded_ids",
        }
        assert b["image"].shape == (8, SIZE, SIZE, 3)
        assert b["image"].dtype == np.uint8
        assert b["mask"].shape == (8, 4, 4) and b["mask"].dtype == bool
        assert b["image"].max() > 150 and b["image"].min() < 60
        counts = b["mask"].sum(axis=(1, 2))
        assert (counts >= 1).all() and (counts <= 6).all()
    # Crops differ between views of the same photos.
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_mask_fraction_in_batches(photos):
    batches = take(_dataset(photos, per_host_batch=16), 8)
    masks = np.concatenate([b["mask"] for b in batches])
    frac = masks.mean()
    assert 0.30 < frac <= 6 / 16, frac
    # Masks are per element, not one mask copied over the batch.
    assert len({m.tobytes() for m in masks}) > len(masks) // 4
    full = masking.BlockMaskGenerator()
    batches = take(_dataset(photos, image_size=224, mask_generator=full, per_host_batch=4), 2)
    counts = np.concatenate([b["mask"] for b in batches]).sum(axis=(1, 2))
    assert ((counts >= 60) & (counts <= 78)).all()


def test_determinism_and_seed_dependence(photos):
    a = take(_dataset(photos, seed=7), 4)
    b = take(_dataset(photos, seed=7), 4)
    c = take(_dataset(photos, seed=8), 4)
    assert_batches_equal(a, b)
    assert not _batches_equal(a, c)


def test_dataset_is_infinite_by_default_and_finite_on_request():
    photos = _constant_photos(5)
    # 5 photos, batch 4: many more batches than one epoch holds.
    assert len(take(_dataset(photos), 20)) == 20
    finite = list(_dataset(photos, num_epochs=2))
    assert len(finite) == (2 * 5) // 4  # remainder dropped
    got = sorted(i for b in finite for i in _indices(b))
    assert set(got) <= set(range(5)) and len(got) == 8


def test_each_epoch_visits_every_photo_once_in_a_new_order():
    n = 7
    photos = _constant_photos(n)
    batches = take(_dataset(photos, per_host_batch=1), 3 * n)
    stream = [i for b in batches for i in _indices(b)]
    epochs = [stream[k * n : (k + 1) * n] for k in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(n))
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]
    # The pipeline's order is exactly the documented index stream.
    assert stream == list(itertools.islice(batching.index_stream(n, seed=0), 3 * n))


def test_sharding_gives_disjoint_streams_covering_each_epoch():
    n, count = 7, 2
    photos = _constant_photos(n)
    per_shard = []
    for shard in range(count):
        ds = _dataset(photos, per_host_batch=1, shard_index=shard, shard_count=count)
        stream = [i for b in take(ds, 2 * n) for i in _indices(b)]
        assert stream == list(
            itertools.islice(
                batching.index_stream(n, seed=0, shard_index=shard, shard_count=count), 2 * n
            )
        )
        per_shard.append(stream)
    assert per_shard[0] != per_shard[1]
    # Interleaving the host streams rebuilds the global stream: the hosts
    # take disjoint global positions, and together cover every epoch.
    merged = [x for pair in zip(*per_shard) for x in pair]
    assert merged == list(itertools.islice(batching.index_stream(n, seed=0), 2 * n * count))
    for k in range(2):
        assert sorted(merged[k * n : (k + 1) * n]) == list(range(n))


def test_shards_use_different_augmentations(photos):
    # Same photo at the same local step on two hosts must not share the
    # crop or mask: the per-element rng comes from the global position.
    single = photos[:1]
    m0 = take(_dataset(single, shard_index=0, shard_count=2), 3)
    m1 = take(_dataset(single, shard_index=1, shard_count=2), 3)
    for a, b in zip(m0, m1):
        assert not np.array_equal(a["image"], b["image"])


def test_iterator_state_checkpoint_restore(photos):
    it = iter(_dataset(photos))
    take(it, 3)
    state = it.get_state()
    json.dumps(state)  # small and serializable
    after = take(it, 3)
    it.set_state(state)
    assert_batches_equal(take(it, 3), after)
    # A fresh iterator restored from the state continues identically.
    fresh = iter(_dataset(photos))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), after)


def test_multiprocess_workers_match_in_process(photos):
    ref = take(_dataset(photos), 3)
    it = iter(_dataset(photos, worker_count=2))
    try:
        got = take(it, 3)
        assert_batches_equal(got, ref)
        del got
    finally:
        it.close()


def test_pretrain_stream_embedded():
    config = defaults.pretrain_config()
    config.input.dataset = "embedded"
    config.input.split = "validation"
    config.input.batch_size = 2
    assert config.mask.grid is None  # filled with the token grid
    it = streams.pretrain_stream(config, ImageSpec, mask_grid=(4, 4))
    first = [next(it) for _ in range(2)]
    for b in first:
        assert b["image"].shape == (2, SIZE, SIZE, 3)
        assert b["image"].dtype == np.uint8
        assert b["mask"].shape == (2, 4, 4) and b["mask"].dtype == bool
        assert (b["mask"].sum(axis=(1, 2)) <= 6).all()
    again = streams.pretrain_stream(config, ImageSpec, mask_grid=(4, 4))
    assert_batches_equal([next(again) for _ in range(2)], first)
    # Coarser mask units than tokens are allowed (one unit = 32 px here).
    b = next(streams.pretrain_stream(config, ImageSpec, mask_grid=(2, 2)))
    assert b["mask"].shape == (2, 2, 2)
    with pytest.raises(ValueError, match="must be square and divide"):
        streams.pretrain_stream(config, ImageSpec, mask_grid=(3, 3))


def test_records_with_image_key_are_accepted(photos):
    records = [{"image": p, "label": 10 + i} for i, p in enumerate(photos)]
    from_records, from_arrays = take(_dataset(records), 2), take(_dataset(photos), 2)
    for a, b in zip(from_records, from_arrays):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        assert (b["label"] == -1).all() and (a["label"] >= 10).all()  # labels travel along


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(image_size=60), "multiple of patch_size"),
        (dict(image_size=128), r"mask grid \(4, 4\) does not match.*\(8, 8\)"),
        (dict(mask_generator=masking.CubeMaskGenerator()), "does not match"),
        (dict(per_host_batch=0), "per_host_batch"),
        (dict(shard_index=2, shard_count=2), "shard_index < shard_count"),
        (dict(scale=(0.0, 1.0)), "crop scale"),
        (dict(ratio=(2.0, 1.0)), "crop ratio"),
        (dict(num_epochs=0), "num_epochs"),
    ],
)
def test_invalid_arguments_raise(photos, kw, match):
    with pytest.raises(ValueError, match=match):
        _dataset(photos, **kw)


def test_invalid_photos_raise():
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        _dataset([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        _dataset([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="empty"):
        _dataset([])


# ---------------------------------------------------------------- folders, bad images, eval


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, photos):
    """root/<class>/<file>: two classes of real photos, one PNG and one JPEG each, plus a
    corrupt JPEG and a file that is not an image."""
    root = tmp_path_factory.mktemp("folder") / "train"
    for c, names in enumerate((("astronaut", "coffee"), ("camera", "china"))):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        embedded_photos = [embedded.load_photo(n) for n in names]
        Image.fromarray(embedded_photos[0]).save(folder / "a.png")
        Image.fromarray(embedded_photos[1]).save(folder / "b.jpg", quality=95)
    (root / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "class_1" / "notes.txt").write_text("ignored: not an image extension")
    return str(root)


def test_image_folder_lists_classes_and_decodes(image_folder):
    source = sources.ImageFolder(image_folder)
    assert source.classes == ("class_0", "class_1")
    assert [f for f, _ in source.files] == [
        "class_0/a.png",
        "class_0/b.jpg",
        "class_1/a.png",
        "class_1/b.jpg",
        "class_1/broken.jpg",
    ]
    item = source[0]
    np.testing.assert_array_equal(item["image"], embedded.load_photo("astronaut"))
    assert item["label"] == 0 and source[2]["label"] == 1
    gray = source[2]["image"]  # the grayscale camera photo comes back as RGB
    assert gray.shape == (512, 512, 3) and (gray[..., 0] == gray[..., 2]).all()
    with pytest.raises(skipping.BadImage, match="class_1/broken.jpg"):
        source[4]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.ImageFolder(image_folder + "_missing")


def test_bad_images_are_skipped_and_counted(image_folder):
    source = sources.ImageFolder(image_folder)
    batches = list(_dataset(source, per_host_batch=5, num_epochs=4))
    skipped = sum(int(b["skipped"].sum()) for b in batches)
    assert skipped >= 4  # the broken file, once per epoch
    assert all("broken.jpg" in r for b in batches for r in b["skipped_ids"] if r)
    assert all(set(b["label"].tolist()) <= {0, 1} for b in batches)


def test_eval_view_matches_torchvision_resize_and_center_crop(photos):
    from torchvision.transforms import v2

    ref = v2.Compose(
        [v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224)]
    )
    for photo in photos[:4]:
        ours = images.resize_center_crop(photo, 256, 224)
        pil = ref(Image.fromarray(photo))
        np.testing.assert_array_equal(ours, np.asarray(pil))


def test_eval_pipeline_pads_hosts_to_equal_batches(photos):
    n, batch = len(photos), 4
    per_host = []
    for host in range(4):
        options = StreamOptions(per_host_batch=batch, shard_index=host, shard_count=4)
        ds = images.make_image_eval_dataset(photos, options, image_size=SIZE)
        per_host.append(list(ds))
    assert {len(b) for b in per_host} == {1}  # ceil(ceil(6 / 4) / 4) batches everywhere
    seen = [int(i) for bs in per_host for b in bs for i, ok in zip(b["index"], b["valid"]) if ok]
    assert sorted(seen) == list(range(n))
    first = per_host[0][0]
    assert first["image"].shape == (batch, SIZE, SIZE, 3) and first["valid"].sum() == 2
    np.testing.assert_array_equal(
        first["image"][0], images.resize_center_crop(photos[0], round(SIZE / 0.875), SIZE)
    )
    assert batching.eval_indices(6, 1, 4, 4) == [1, 5, -1, -1]


def test_pretrain_stream_reads_folders_and_tfds(image_folder, tmp_path):
    def config(**kw):
        c = ml_collections.ConfigDict(dict(seed=0))
        c.mask = ml_collections.ConfigDict(dict(kind="block", grid=None, ratio=0.4))
        c.input = ml_collections.ConfigDict(dict(split="train", batch_size=2, **kw))
        return c

    kw = dict(mask_grid=(4, 4))
    root = image_folder.rsplit("/", 1)[0]
    batch = next(streams.pretrain_stream(config(dataset="folder", data_dir=root), ImageSpec, **kw))
    assert batch["image"].shape == (2, SIZE, SIZE, 3)
    # A real (tiny) imagenet2012 ArrayRecord build, read through tfds.data_source.
    tfds_dir = str(tmp_path / "tfds")
    tfds_fixture.write_imagenet2012(tfds_dir, examples_per_split={"train": 4})
    source = config(dataset="imagenet2012", data_dir=tfds_dir)
    batch = next(streams.pretrain_stream(source, ImageSpec, **kw))
    assert batch["image"].shape == (2, SIZE, SIZE, 3) and "label" in batch
    with pytest.raises(ValueError, match="input.data_dir"):
        streams.pretrain_stream(config(dataset="folder"), ImageSpec, **kw)
