"""Fine-tuning pipelines: crops, flips, RandAugment and erasing boxes from each element's own
generator; labels; repeated augmentation; video clips; resumable iterators; digits."""

import ml_collections
import numpy as np
import pytest

from maskfeat_jax.data import (
    augment,
    batching,
    classification,
    digits,
    embedded_video,
    images,
    streams,
    videos,
)
from maskfeat_jax.data.batching import StreamOptions
from maskfeat_jax.data.video_records import VideoRecords
from tests.support.batches import assert_batches_equal, take

SMALL = embedded_video.EmbeddedVideos(
    videos_per_photo=1, num_frames=40, height=64, width=80, gop=16
)


@pytest.fixture(scope="module")
def digit_source():
    return digits.load_split("train", image_size=24)


def _image_dataset(source, per_host_batch=8, seed=0, **kw):
    views = classification.ImageViews(source, image_size=24, scale=(0.5, 1.0), ratio=(0.75, 4 / 3))
    transform = dict(
        hflip=False,
        rand_augment=augment.RandAugment("rand-m9-mstd0.5-inc1", image_size=24),
        erase_prob=0.5,
    )
    transform.update(kw)
    return classification.make_train_dataset(
        classification.ClassificationTrainTransform(views, **transform),
        StreamOptions(per_host_batch=per_host_batch, seed=seed),
    )


def test_digits_split_is_stratified_fixed_and_disjoint():
    labels = np.asarray([r["label"] for r in digits.load_split("all", image_size=8)])
    train = digits.split_indices(labels, "train")
    test = digits.split_indices(labels, "test")
    assert len(train) + len(test) == 1797 and not set(train) & set(test)
    assert np.abs(np.bincount(labels[test]) / np.bincount(labels) - 0.3).max() < 0.01
    few = digits.split_indices(labels, "train_20")
    assert set(few) <= set(train) and (np.bincount(labels[few]) == 20).all()
    np.testing.assert_array_equal(few, digits.split_indices(labels, "train_20"))
    # Scaled scans: the 8x8 original survives a 3x bicubic upscale at its pixel centres.
    from sklearn.datasets import load_digits

    small = digits.load_split("all", image_size=24)[5]["image"][1::3, 1::3, 0].astype(float)
    original = load_digits().images[5] * 255 / 16
    assert np.corrcoef(small.ravel(), original.ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="train_<n per class>"):
        digits.split_indices(labels, "val")


def test_element_is_crop_then_randaugment_then_boxes_from_its_generator(digit_source):
    views = classification.ImageViews(
        digit_source, image_size=24, scale=(0.5, 1), ratio=(0.75, 4 / 3)
    )
    ra = augment.RandAugment("rand-m9-mstd0.5-inc1", image_size=24)
    transform = classification.ClassificationTrainTransform(
        views, hflip=True, rand_augment=ra, erase_prob=0.5
    )
    for seed in range(6):
        out = transform.random_map(11, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        photo = digit_source[11]["image"]
        ref = images.random_resized_crop(photo, rng, 24, (0.5, 1), (0.75, 4 / 3))
        if rng.random() < 0.5:
            ref = ref[:, ::-1]
        ref = ra(np.ascontiguousarray(ref), rng)
        boxes = augment.sample_erase_boxes(rng, 24, 24, probability=0.5)
        np.testing.assert_array_equal(out["image"], ref)
        np.testing.assert_array_equal(out["erase_boxes"], boxes)
        assert out["label"] == digit_source[11]["label"]


def test_batches_have_labels_of_their_records_and_resume_exactly(digit_source):
    ds = _image_dataset(digit_source)
    order = batching.index_stream(len(digit_source), seed=0)
    first = take(ds, 3)
    labels = np.concatenate([b["label"] for b in first])
    want = [digit_source[int(order[i])]["label"] for i in range(24)]
    np.testing.assert_array_equal(labels, want)
    assert first[0]["image"].shape == (8, 24, 24, 3) and first[0]["erase_boxes"].shape == (8, 1, 4)
    erased = np.concatenate([b["erase_boxes"][:, 0, 2] > 0 for b in first])
    assert 0.2 < erased.mean() < 0.8  # p = 0.5
    it = iter(ds)
    next(it)
    state = it.get_state()
    expected = take(it, 2)
    again = iter(_image_dataset(digit_source))
    again.set_state(state)
    assert_batches_equal(take(again, 2), expected, required=("image", "label"))
    other_seed = next(iter(_image_dataset(digit_source, seed=1)))
    assert not np.array_equal(other_seed["image"], first[0]["image"])


def test_repeated_augmentation_gives_adjacent_views_of_one_record(digit_source):
    ds = _image_dataset(digit_source, per_host_batch=8, repeats=2)
    batch = next(iter(ds))
    assert batch["image"].shape == (8, 24, 24, 3) and batch["erase_boxes"].shape == (8, 1, 4)
    order = batching.index_stream(len(digit_source), seed=0)
    want = [digit_source[int(order[i])]["label"] for i in range(4)]
    np.testing.assert_array_equal(batch["label"], np.repeat(want, 2))
    assert batch["skipped"].shape == (8,)
    for i in range(0, 8, 2):  # two independent augmentations of the same image
        assert not np.array_equal(batch["image"][i], batch["image"][i + 1])
    with pytest.raises(ValueError, match="repeated augmentation"):
        _image_dataset(digit_source, per_host_batch=7, repeats=2)


def test_video_views_share_one_decoded_clip_and_one_op_sequence(tmp_path):
    data_dir = embedded_video.ensure(str(tmp_path / "videos"), SMALL)
    config = ml_collections.ConfigDict(
        dict(
            seed=0,
            input=dict(
                dataset="embedded",
                data_dir=data_dir,
                split="train",
                frame_stride=4,
                short_side=0,
                embedded_videos=SMALL.__dict__.copy(),
                rand_augment="rand-m7-mstd0.5-inc1",
                erase_prob=1.0,
                repeats=2,
                mean=(0.45,) * 3,
                batch_size=4,
            ),
        )
    )

    class Spec:
        is_video, num_frames, image_size = True, 4, 32

    batch = next(streams.classification_stream(config, Spec))
    assert batch["image"].shape == (4, 4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert (batch["erase_boxes"][:, 0, 2] > 0).all()  # p = 1: a box for every clip
    assert batch["label"][0] == batch["label"][1] and batch["label"][2] == batch["label"][3]
    # The transform by hand: one clip decoded, two crops, one RandAugment draw per view.
    sampling = videos.ClipSampling(
        num_frames=4, stride=4, target_fps=30, image_size=32, short_side=0
    )
    source = VideoRecords(data_dir, "train")
    views = classification.ClipViews(source, sampling, scale=(0.08, 1), ratio=(0.75, 4 / 3))
    ra = augment.RandAugment("rand-m7-mstd0.5-inc1", image_size=32, mean=(0.5,) * 3)
    transform = classification.ClassificationTrainTransform(
        views, rand_augment=ra, erase_prob=1.0, repeats=2
    )
    out = transform.random_map(2, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    loaded, label = views.load(2, rng)
    for r in range(2):
        clip = ra(views.view(loaded, rng, True), rng)
        boxes = augment.sample_erase_boxes(rng, 32, 32, probability=1.0, max_attempts=100)
        np.testing.assert_array_equal(out["image"][r], clip)
        np.testing.assert_array_equal(out["erase_boxes"][r], boxes)
    assert (out["label"] == label).all()
