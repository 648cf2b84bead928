"""Datasets, the mini-batch loader (host side) and batch transforms (NumPy, or CuPy for GPU augmentation)."""
from .datasets import (CIFAR10_CLASSES, DATASETS, DIGIT_CLASSES, FASHION_MNIST_CLASSES, Dataset, load_dataset,
                       train_val_split)
from .loader import DataLoader
from .readers import read_cifar10_batch, read_idx, read_idx_images, read_idx_labels, read_npz
from .transforms import (AUGMENTATIONS, Compose, CutMix, Cutout, GaussianNoise, MixUp, Normalize,
                         RandomCrop, RandomHorizontalFlip, build_augmentation)
