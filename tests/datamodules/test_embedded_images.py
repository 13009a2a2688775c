import numpy as np
import pytest
import torch

from litlab.datamodules import EmbeddedImageDataModule
from litlab.datamodules.embedded_images import load_embedded
from litlab.errors import ConfigError


def all_images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def test_mnist5k_file_format():
    images, labels = load_embedded("mnist5k")
    assert images.shape == (5000, 28, 28) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.bincount(labels).tolist() == [500] * 10  # the label is the last CSV column
    # a real digit: ink in the middle, blank border
    assert images[:, 0, :].max() == 0.0 and images[:, 10:18, 10:18].mean() > 0.2


@pytest.mark.parametrize(
    "dataset, native, sizes",
    [("mnist5k", 28, (3500, 500, 1000)), ("digits", 8, (1259, 179, 359))],
)
def test_attributes_before_setup_and_split_sizes(dataset, native, sizes):
    dm = EmbeddedImageDataModule(dataset=dataset, batch_size=32)
    # the CLI links these into the model before setup()
    assert (dm.num_classes, dm.img_size, dm.in_chans) == (10, native, 1)
    assert dm.class_names == [str(i) for i in range(10)]
    assert dm.train_dataset is None
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == sizes
    split = dm.split_indices
    assert sum(len(v) for v in split.values()) == (5000 if dataset == "mnist5k" else 1797)
    assert not set(split["train"]) & set(split["val"])
    assert not set(split["train"]) & set(split["test"])
    assert not set(split["val"]) & set(split["test"])
    # stratified: every class in every split, in proportion
    labels = load_embedded(dataset)[1]
    for name, frac in (("val", 0.1), ("test", 0.2)):
        counts = np.bincount(labels[split[name]], minlength=10)
        expected = np.round(np.bincount(labels) * frac)
        assert np.array_equal(counts, expected)

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, native, native) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    # normalised with the train split's statistics
    train = dm.train_dataset.images
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-3
    x, y = next(iter(dm.predict_dataloader()))
    assert torch.equal(x, dm.test_dataset.images[:32]) and torch.equal(y, dm.test_dataset.labels[:32])


def test_split_is_determined_by_seed():
    a = EmbeddedImageDataModule(dataset="digits", seed=3)
    b = EmbeddedImageDataModule(dataset="digits", seed=3)
    c = EmbeddedImageDataModule(dataset="digits", seed=4)
    for dm in (a, b, c):
        dm.setup()
    for name in ("train", "val", "test"):
        assert np.array_equal(a.split_indices[name], b.split_indices[name])
        assert not np.array_equal(a.split_indices[name], c.split_indices[name])
    assert torch.equal(a.val_dataset.images, b.val_dataset.images)


def test_resize_and_three_channels():
    dm = EmbeddedImageDataModule(dataset="digits", img_size=32, in_chans=3, batch_size=8, augment=False)
    assert (dm.img_size, dm.in_chans) == (32, 3)
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], x[:, 2])


def test_augmentation_translates_train_images_only():
    dm = EmbeddedImageDataModule(dataset="digits", augment=True)
    dm.setup()
    torch.manual_seed(0)
    shifted = all_images(dm.train_dataset)
    assert shifted.shape == dm.train_dataset.images.shape
    assert not torch.equal(shifted, dm.train_dataset.images)
    # a translation, not noise: each image is its original shifted by at most 1 pixel (8x8 digits)
    img, orig = shifted[0, 0], dm.train_dataset.images[0, 0]
    fill = dm.train_dataset.fill
    padded = torch.nn.functional.pad(orig, (1, 1, 1, 1), value=fill)
    assert any(torch.equal(img, padded[dy : dy + 8, dx : dx + 8]) for dy in range(3) for dx in range(3))
    assert torch.equal(all_images(dm.val_dataset), dm.val_dataset.images)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"dataset": "cifar10"}, "dataset"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"img_size": 0}, "img_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"val_fraction": 1.5}, "val_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"seed": "x"}, "seed"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        EmbeddedImageDataModule(**kwargs)


def test_batches_are_a_function_of_seed_and_epoch():
    """Shuffling and translations depend on (seed, epoch) only: a resumed run repeats an uninterrupted one."""

    def epochs(dm, n):
        loader = dm.train_dataloader()
        return [[(x.clone(), y.clone()) for x, y in loader] for _ in range(n)]

    a = EmbeddedImageDataModule(dataset="digits", batch_size=256, augment=True, seed=5)
    a.setup()
    straight = epochs(a, 2)
    assert not torch.equal(straight[0][0][1], straight[1][0][1])  # another order in epoch 1
    # a "resumed" loader that starts at epoch 1 (the Trainer's current_epoch after loading a checkpoint)
    b = EmbeddedImageDataModule(dataset="digits", batch_size=256, augment=True, seed=5)
    b.setup()
    loader = b.train_dataloader()
    loader.sampler.set_epoch(1)  # what Lightning does before each epoch, also after loading a checkpoint
    torch.manual_seed(123)  # the global RNG plays no part
    resumed = [(x, y) for x, y in loader]
    for (xa, ya), (xb, yb) in zip(straight[1], resumed):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    # with loader workers too
    c = EmbeddedImageDataModule(dataset="digits", batch_size=256, augment=True, seed=5, num_workers=2)
    c.setup()
    for (xa, ya), (xc, yc) in zip(straight[0], epochs(c, 1)[0]):
        assert torch.equal(ya, yc) and torch.equal(xa, xc)
