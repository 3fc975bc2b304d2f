"""Labelled image sources: the embedded Fashion-MNIST subset, its shifted copy, image folders,
CoOp/Dassl benchmarks, each a registered :class:`DataSource` (:mod:`pyro_clip.data.registry`),
and few-shot / base-to-new sampling."""

from pyro_clip.data.arrays import ArrayImages
from pyro_clip.data.base import LabeledImages, SubsetImages
from pyro_clip.data.dassl import DasslSplitImages, validate_dassl_layout
from pyro_clip.data.dassl_specs import DASSL_DATASETS, dassl_names
from pyro_clip.data.embedded import FASHION_MNIST_CLASSNAMES, load_embedded
from pyro_clip.data.eval_sets import eval_class_ids
from pyro_clip.data.fewshot import (
    FewShotSplit,
    base_new_classes,
    few_shot_indices,
    make_few_shot,
    sample_few_shot,
    subsample_classes,
)
from pyro_clip.data.folder_splits import FolderSplits, read_folder_splits
from pyro_clip.data.folders import ImageFolderImages
from pyro_clip.data.registry import (
    default_eval_datasets,
    default_templates,
    has_validation_split,
    known_datasets,
    load_dataset,
    load_splits,
    register_dataset,
    unregister_dataset,
)
from pyro_clip.data.shifted import CORRUPTIONS, load_shifted
from pyro_clip.data.sources.base import DataSource

__all__ = [
    "CORRUPTIONS",
    "DASSL_DATASETS",
    "FASHION_MNIST_CLASSNAMES",
    "ArrayImages",
    "DasslSplitImages",
    "DataSource",
    "FewShotSplit",
    "FolderSplits",
    "ImageFolderImages",
    "LabeledImages",
    "SubsetImages",
    "base_new_classes",
    "dassl_names",
    "default_eval_datasets",
    "default_templates",
    "eval_class_ids",
    "few_shot_indices",
    "has_validation_split",
    "known_datasets",
    "load_dataset",
    "load_embedded",
    "load_shifted",
    "load_splits",
    "make_few_shot",
    "read_folder_splits",
    "register_dataset",
    "sample_few_shot",
    "subsample_classes",
    "unregister_dataset",
    "validate_dassl_layout",
]
