"""LightningDataModules: images (embedded, folder, webdataset shards), text (bytes or BPE), shard writers."""

from litlab.datamodules.bpe_training import train_bpe
from litlab.datamodules.embedded_images import EmbeddedImageDataModule
from litlab.datamodules.image_base import ImageDataModuleBase
from litlab.datamodules.image_folder import ImageFolderDataModule
from litlab.datamodules.image_shards import WebDatasetImageDataModule
from litlab.datamodules.shard_writer import write_image_shards
from litlab.datamodules.text import TextDataModule
from litlab.datamodules.text_shard_writer import write_text_shards

__all__ = [
    "EmbeddedImageDataModule",
    "ImageDataModuleBase",
    "ImageFolderDataModule",
    "TextDataModule",
    "WebDatasetImageDataModule",
    "train_bpe",
    "write_image_shards",
    "write_text_shards",
]
