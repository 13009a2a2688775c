"""LightningDataModules: images (embedded, folder, webdataset shards) and the shard writer."""

from litlab.datamodules.embedded_images import EmbeddedImageDataModule
from litlab.datamodules.image_base import ImageDataModuleBase
from litlab.datamodules.image_folder import ImageFolderDataModule
from litlab.datamodules.image_shards import WebDatasetImageDataModule
from litlab.datamodules.shard_writer import write_image_shards

__all__ = [
    "EmbeddedImageDataModule",
    "ImageDataModuleBase",
    "ImageFolderDataModule",
    "WebDatasetImageDataModule",
    "write_image_shards",
]
