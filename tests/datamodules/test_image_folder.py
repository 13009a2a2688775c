import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from litlab.datamodules import ImageFolderDataModule
from litlab.errors import ConfigError, DataError


def batches(loader):
    return list(loader)


def test_loads_batches_and_sets_attributes_before_setup(make_folder):
    root = make_folder(counts={"train": 4, "val": 2})
    dm = ImageFolderDataModule(root, img_size=24, batch_size=5, augment=False)
    assert (dm.num_classes, dm.img_size, dm.in_chans) == (3, 24, 3)
    assert dm.class_names == ["cat", "dog", "eel"]
    dm.setup("fit")
    assert len(dm.train_dataset) == 12 and len(dm.val_dataset) == 6
    train = batches(dm.train_dataloader())
    assert [len(y) for _, y in train] == [5, 5, 2]
    x, y = train[0]
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    # labels follow the class folders: the red channel encodes the class (see conftest)
    val = batches(dm.val_dataloader())
    xs = torch.cat([x for x, _ in val])
    ys = torch.cat([y for _, y in val])
    assert ys.tolist() == [0, 0, 1, 1, 2, 2]
    red = xs[:, 0].mean(dim=(1, 2))
    assert (red[2:4] > red[0:2].max()).all() and (red[4:6] > red[2:4].max()).all()
    # no test/ folder: test and predict are the val split
    dm.setup("test")
    assert dm.test_dataset is dm.val_dataset
    assert torch.equal(torch.cat([y for _, y in dm.predict_dataloader()]), ys)


def test_greyscale_and_augmentation(make_folder):
    root = make_folder(counts={"train": 2, "val": 1, "test": 1})
    dm = ImageFolderDataModule(root, img_size=20, in_chans=1, batch_size=6, mean=[0.5], std=[0.25], augment=True)
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 1, 20, 20)
    assert dm.test_dataset is not dm.val_dataset and len(dm.test_dataset) == 3
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 1, 20, 20)


def test_missing_root_and_split(tmp_path, make_folder):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        ImageFolderDataModule(str(tmp_path / "nope"))
    root = make_folder(counts={"train": 1})
    with pytest.raises(DataError, match=os.path.join(root, "val")):
        ImageFolderDataModule(root)


def test_empty_folders(tmp_path, make_folder):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    with pytest.raises(DataError, match="no class folders") as info:
        ImageFolderDataModule(str(tmp_path / "empty"))
    assert str(tmp_path / "empty" / "train") in str(info.value)

    root = make_folder(counts={"train": 2, "val": 1})
    for f in os.listdir(os.path.join(root, "val", "dog")):
        os.remove(os.path.join(root, "val", "dog", f))
    dm = ImageFolderDataModule(root)
    with pytest.raises(DataError, match=os.path.join(root, "val", "dog")):
        dm.setup("fit")


def test_class_folders_must_match(make_folder):
    root = make_folder(counts={"train": 1, "val": 1})
    shutil.rmtree(os.path.join(root, "val", "eel"))
    os.makedirs(os.path.join(root, "val", "fox"))
    with pytest.raises(DataError, match=r"only in .*train: \['eel'\]; only in .*val: \['fox'\]"):
        ImageFolderDataModule(root)


def write_garbage(root: str) -> str:
    path = os.path.join(root, "train", "dog", "broken.jpg")
    with open(path, "wb") as f:
        f.write(b"this is not a JPEG" * 10)
    return path


def test_corrupt_image_names_the_file(make_folder):
    root = make_folder(counts={"train": 2, "val": 1})
    bad = write_garbage(root)
    dm = ImageFolderDataModule(root, img_size=16, batch_size=4)
    dm.setup("fit")
    with pytest.raises(DataError, match=bad):
        batches(dm.train_dataloader())


def test_truncated_jpeg_is_corrupt_too(make_folder):
    root = make_folder(counts={"train": 2, "val": 1}, size=64)
    path = os.path.join(root, "train", "cat", "train0.jpg")
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    dm = ImageFolderDataModule(root, img_size=16, batch_size=4)
    dm.setup("fit")
    index = [r.path for r in dm.train_dataset.records].index(path)
    with pytest.raises(DataError, match=path):
        dm.train_dataset[index]


def test_skip_corrupt_counts_and_keeps_batch_sizes(make_folder, caplog):
    root = make_folder(counts={"train": 2, "val": 1})
    bad = write_garbage(root)
    dm = ImageFolderDataModule(root, img_size=16, batch_size=4, skip_corrupt=True)
    dm.setup("fit")
    assert len(dm.train_dataset) == 7
    with caplog.at_level(logging.WARNING):
        out = batches(dm.train_dataloader())
    assert [len(y) for _, y in out] == [4, 3]
    assert dm.num_skipped == 1
    assert bad in caplog.text
    # a second epoch does not count the same file again
    batches(dm.train_dataloader())
    assert dm.num_skipped == 1


def test_skip_corrupt_count_reaches_the_main_process_from_workers(make_folder):
    root = make_folder(counts={"train": 2, "val": 1})
    write_garbage(root)
    dm = ImageFolderDataModule(root, img_size=16, batch_size=4, skip_corrupt=True, num_workers=2)
    dm.setup("fit")
    assert sum(len(y) for _, y in dm.train_dataloader()) == 7
    assert dm.num_skipped == 1


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"img_size": 0}, "img_size"),
        ({"in_chans": 4}, "in_chans"),
        ({"batch_size": -2}, "batch_size"),
        ({"mean": [0.1, 0.2]}, "mean"),
        ({"std": [0.0]}, "std"),
    ],
)
def test_bad_arguments(make_folder, kwargs, name):
    root = make_folder(counts={"train": 1, "val": 1})
    with pytest.raises(ConfigError, match=name):
        ImageFolderDataModule(root, **kwargs)
