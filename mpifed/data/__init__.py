"""Datasets: LIBSVM reading, the registry of paper datasets (checksums, cache, download),
client partitions and synthetic federations; MNIST (IDX) and a synthetic image set."""

from .libsvm import Dataset, add_intercept, read_libsvm
from .partition import Partition, paper_split
from .registry import DATASETS, PAPER_SPLITS, DatasetInfo, cache_dir, data_dirs, describe, fetch, load, resolve
from .synthetic import PCA_EIGENGAP, SYNTHETIC_DEFAULTS, pca_spectrum, synthetic_clients, synthetic_pca_clients
from . import sparse_synthetic
from . import mnist
from .mnist import IMAGE_SETS, load_images, load_mnist, synthetic_images

__all__ = [
    "Dataset", "read_libsvm", "add_intercept",
    "DATASETS", "PAPER_SPLITS", "DatasetInfo", "resolve", "fetch", "load", "cache_dir", "data_dirs", "describe",
    "Partition", "paper_split", "synthetic_clients", "SYNTHETIC_DEFAULTS", "synthetic_pca_clients", "pca_spectrum", "PCA_EIGENGAP",
    "sparse_synthetic",
    "mnist", "IMAGE_SETS", "load_images", "load_mnist", "synthetic_images",
]
