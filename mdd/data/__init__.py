"""Datasets as uint8 image tensors: Fashion-MNIST and ImageNet class-folder subsets."""

from mdd.data.load import DatasetSplits, ImageSet, load_dataset

__all__ = ["DatasetSplits", "ImageSet", "load_dataset"]
