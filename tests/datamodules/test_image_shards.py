import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from litlab.datamodules import WebDatasetImageDataModule, write_image_shards
from litlab.datamodules.shard_index import index_shard, resolve_shards
from litlab.errors import ConfigError, DataError

from .conftest import CLASSES, write_image_folder


def labels_of(loader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def folder_labels(root: str, split: str) -> list[int]:
    return sorted(i for i, c in enumerate(CLASSES) for _ in os.listdir(os.path.join(root, split, c)))


@pytest.fixture
def shards(tmp_path):
    """11 train images (3 shards of 4/4/3), 6 val images (2 shards), 3 test images, and their meta.json."""
    src = write_image_folder(tmp_path / "src", counts={"train": 4, "val": 2, "test": 1})
    os.remove(os.path.join(src, "train", "eel", "train3.png"))  # 11 train images
    dst = str(tmp_path / "shards")
    paths = write_image_shards(src, dst, shard_size=4)
    return src, dst, paths


def test_writer_layout_and_metadata(shards):
    src, dst, paths = shards
    names = [os.path.basename(p) for p in paths]
    assert names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar",
                     "val-000001.tar", "test-000000.tar"]
    meta = json.loads(Path(dst, "meta.json").read_text())
    assert meta["classes"] == list(CLASSES)
    assert [meta["shards"][n]["num_samples"] for n in names] == [4, 4, 3, 3, 3, 3]
    assert meta["splits"]["train"] == {"split": "train", "num_shards": 3, "num_samples": 11}
    # ImageNet layout: <key>.jpg|png (the original bytes) + <key>.cls
    with tarfile.open(paths[0]) as tf:
        members = tf.getnames()
    assert len(members) == 8 and all(m.rsplit(".", 1)[1] in {"jpg", "png", "cls"} for m in members)
    samples = list(wds.WebDataset(paths[:3], shardshuffle=False))
    assert len(samples) == 11
    originals = {Path(src, "train", c, f).read_bytes(): i
                 for i, c in enumerate(CLASSES) for f in os.listdir(os.path.join(src, "train", c))}
    for s in samples:
        data = s.get("jpg", s.get("png"))
        assert originals[data] == int(s["cls"])  # original bytes, right label
    # shuffled before dealing: the first shard is not just class 0
    assert len({int(s["cls"]) for s in samples[:4]}) > 1


def test_writer_is_deterministic_and_rounds_shard_count(tmp_path):
    src = write_image_folder(tmp_path / "src", counts={"train": 3})
    a = write_image_shards(src, str(tmp_path / "a"), split="train", shard_size=4, seed=1)
    b = write_image_shards(src, str(tmp_path / "b"), split="train", shard_size=4, seed=1)
    assert [Path(p).read_bytes() for p in a] == [Path(p).read_bytes() for p in b]
    c = write_image_shards(src, str(tmp_path / "c"), split="train", shard_size=100, prefix="tiny",
                           num_shards_multiple_of=4)
    assert [os.path.basename(p) for p in c] == [f"tiny-train-00000{i}.tar" for i in range(4)]
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert [v["num_samples"] for v in meta["shards"].values()] == [3, 2, 2, 2]
    # rewriting with fewer shards removes the stale ones
    write_image_shards(src, str(tmp_path / "c"), split="train", shard_size=100, prefix="tiny")
    assert sorted(os.listdir(tmp_path / "c")) == ["meta.json", "tiny-train-000000.tar"]


def test_writer_errors(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        write_image_shards(str(tmp_path / "missing"), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of the split folders"):
        write_image_shards(str(tmp_path / "empty"), str(tmp_path / "out"))
    (tmp_path / "empty" / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        write_image_shards(str(tmp_path / "empty"), str(tmp_path / "out"))
    src = write_image_folder(tmp_path / "src", counts={"train": 1})
    with pytest.raises(DataError, match=os.path.join(src, "val")):
        write_image_shards(src, str(tmp_path / "out"), split="val")
    with pytest.raises(ConfigError, match="shard_size"):
        write_image_shards(src, str(tmp_path / "out"), shard_size=0)
    with pytest.raises(ConfigError, match="num_shards_multiple_of=4"):
        write_image_shards(src, str(tmp_path / "out"), num_shards_multiple_of=4)  # 3 images
    bad = os.path.join(src, "train", "cat", "bad.jpg")
    Path(bad).write_bytes(b"garbage")
    with pytest.raises(DataError, match=bad):
        write_image_shards(src, str(tmp_path / "out"))
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path / "out"))


def test_reads_back_what_was_written(shards):
    src, dst, _ = shards
    dm = WebDatasetImageDataModule(
        train_shards=os.path.join(dst, "train-{000000..000002}.tar"),
        val_shards=os.path.join(dst, "val-*.tar"),
        test_shards=os.path.join(dst, "test-000000.tar"),
        img_size=16, batch_size=2, shuffle_buffer=0,
    )
    # from meta.json, before setup
    assert (dm.num_classes, dm.img_size, dm.in_chans, dm.train_samples) == (3, 16, 3, 11)
    assert dm.class_names == list(CLASSES)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 11 // 2
    train = list(loader)
    assert len(train) == 5
    for x, y in train:
        assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sorted(labels_of(dm.val_dataloader())) == folder_labels(src, "val")
    dm.setup("test")
    assert sorted(labels_of(dm.test_dataloader())) == folder_labels(src, "test")
    assert labels_of(dm.predict_dataloader()) == labels_of(dm.test_dataloader())
    # labels match the pixels (red channel encodes the class)
    x = torch.cat([x for x, _ in dm.val_dataloader()])
    y = torch.tensor(labels_of(dm.val_dataloader()))
    red = x[:, 0].mean(dim=(1, 2))
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] < y[j]:
                assert red[i] < red[j]


def test_train_stream_is_seeded_and_changes_with_epoch(shards):
    _, dst, _ = shards

    def make(seed):
        dm = WebDatasetImageDataModule(os.path.join(dst, "train-*.tar"), os.path.join(dst, "val-*.tar"),
                                       img_size=8, batch_size=3, shuffle_buffer=5, seed=seed, augment=False)
        dm.setup("fit")
        return dm.train_dataloader()

    a, b, c = make(0), make(0), make(1)
    first = [y.tolist() for _, y in a]
    assert first == [y.tolist() for _, y in b]
    assert len(first) == 11 // 3
    second = [y.tolist() for _, y in a]  # next epoch of the same loader: other shards, other order
    assert len(second) == len(first) and second != first
    assert [y.tolist() for _, y in c] != first


def test_directory_spec_and_explicit_overrides(tmp_path, shards):
    _, dst, _ = shards
    train_dir = tmp_path / "train_only"
    train_dir.mkdir()
    for i in range(3):
        os.link(os.path.join(dst, f"train-00000{i}.tar"), train_dir / f"part{i}.tar")
    # no meta.json there: num_classes is required, train_samples is counted in setup
    with pytest.raises(ConfigError, match="num_classes"):
        WebDatasetImageDataModule(str(train_dir), os.path.join(dst, "val-*.tar"))
    dm = WebDatasetImageDataModule(str(train_dir), os.path.join(dst, "val-*.tar"), num_classes=5, img_size=8,
                                   batch_size=4)
    assert dm.num_classes == 5 and dm.class_names == ["0", "1", "2", "3", "4"] and dm.train_samples is None
    dm.setup("fit")
    assert dm.train_samples == 11 and len(dm.train_dataloader()) == 2
    dm = WebDatasetImageDataModule(os.path.join(dst, "train-*.tar"), os.path.join(dst, "val-*.tar"),
                                   train_samples=40, img_size=8, batch_size=4)
    dm.setup("fit")
    assert len(list(dm.train_dataloader())) == 10


def test_missing_shards(tmp_path, shards):
    _, dst, _ = shards
    missing = os.path.join(dst, "train-000007.tar")
    with pytest.raises(DataError, match=missing):
        WebDatasetImageDataModule(os.path.join(dst, "train-{000006..000007}.tar"), os.path.join(dst, "val-*.tar"))
    with pytest.raises(DataError, match="nothing-"):
        resolve_shards(os.path.join(dst, "nothing-*.tar"), "val_shards")
    (tmp_path / "no_tars").mkdir()
    with pytest.raises(DataError, match="no_tars"):
        resolve_shards(str(tmp_path / "no_tars"), "train_shards")


def truncate(path: str, keep: int | None = None) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2 if keep is None else keep])


def test_truncated_val_shard_fails_in_setup(shards):
    _, dst, _ = shards
    bad = os.path.join(dst, "val-000001.tar")
    truncate(bad)
    dm = WebDatasetImageDataModule(os.path.join(dst, "train-*.tar"), os.path.join(dst, "val-*.tar"))
    with pytest.raises(DataError, match=bad):
        dm.setup("validate")


def test_shard_cut_at_a_member_boundary_is_caught(shards):
    _, dst, _ = shards
    bad = os.path.join(dst, "val-000000.tar")
    with tarfile.open(bad) as tf:
        members = tf.getmembers()
    truncate(bad, keep=members[2].offset)  # two whole members, then nothing: tarfile alone sees no error
    with pytest.raises(DataError, match=f"{bad} is truncated"):
        index_shard(bad)


def test_truncated_train_shard_fails_while_streaming(shards):
    _, dst, _ = shards
    bad = os.path.join(dst, "train-000001.tar")
    truncate(bad)
    dm = WebDatasetImageDataModule(bad, os.path.join(dst, "val-*.tar"), img_size=8, batch_size=2, train_samples=8)
    dm.setup("fit")
    with pytest.raises(DataError, match=bad):
        list(dm.train_dataloader())


def test_truncated_train_shard_is_skipped_with_skip_corrupt(shards, caplog):
    _, dst, _ = shards
    bad = os.path.join(dst, "train-000001.tar")
    truncate(bad)
    dm = WebDatasetImageDataModule(os.path.join(dst, "train-*.tar"), os.path.join(dst, "val-*.tar"), img_size=8,
                                   batch_size=2, skip_corrupt=True, num_workers=1)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        assert len(list(dm.train_dataloader())) == 5
    assert dm.num_skipped > 0  # counted in the worker, seen here


def write_corrupt_record_shards(tmp_path) -> tuple[str, str]:
    path = str(tmp_path / "corrupt-000000.tar")
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good, format="PNG")
    with wds.TarWriter(path, encoder=False) as w:
        w.write({"__key__": "s0", "png": good.getvalue(), "cls": b"1"})
        w.write({"__key__": "s1", "jpg": b"not a jpeg at all", "cls": b"0"})
        w.write({"__key__": "s2", "png": good.getvalue(), "cls": b"1"})
    return path, "s1"


def test_corrupt_record_names_shard_and_key(tmp_path):
    path, key = write_corrupt_record_shards(tmp_path)
    dm = WebDatasetImageDataModule(path, path, num_classes=2, img_size=8, batch_size=3)
    dm.setup()
    with pytest.raises(DataError, match=f"shard {path}, key {key}"):
        list(dm.val_dataloader())
    with pytest.raises(DataError, match=f"shard {path}, key {key}"):
        list(dm.train_dataloader())


def test_corrupt_record_skipped(tmp_path):
    path, _ = write_corrupt_record_shards(tmp_path)
    dm = WebDatasetImageDataModule(path, path, num_classes=2, img_size=8, batch_size=1, skip_corrupt=True,
                                   shuffle_buffer=0)
    dm.setup()
    assert labels_of(dm.val_dataloader()) == [1, 1, 1]  # s1 replaced by the next good record
    assert dm.num_skipped == 1
    assert labels_of(dm.train_dataloader()) == [1, 1, 1]  # 3 batches, drawn from the good records
    assert dm.num_skipped >= 2


def test_label_out_of_range(tmp_path):
    path, _ = write_corrupt_record_shards(tmp_path)
    dm = WebDatasetImageDataModule(path, path, num_classes=1, img_size=8, skip_corrupt=True)
    with pytest.raises(DataError, match="label 1 is outside"):
        dm.setup("validate")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"img_size": 0}, "img_size"),
        ({"in_chans": 2}, "in_chans"),
        ({"num_classes": 0}, "num_classes"),
        ({"train_samples": 0}, "train_samples"),
        ({"shuffle_buffer": -1}, "shuffle_buffer"),
        ({"num_workers": -1}, "num_workers"),
        ({"val_shards": ""}, "val_shards"),
    ],
)
def test_bad_arguments(shards, kwargs, name):
    _, dst, _ = shards
    args = {"train_shards": os.path.join(dst, "train-*.tar"), "val_shards": os.path.join(dst, "val-*.tar")}
    with pytest.raises(ConfigError, match=name):
        WebDatasetImageDataModule(**{**args, **kwargs})
