"""Images in a class-per-folder layout: ``root/<class name>/<image files>``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from pyro_clip.data._decode import IMAGE_EXTENSIONS, is_image_file, verify_image
from pyro_clip.data._files import ImageFiles
from pyro_clip.errors import DataError


class ImageFolderImages(ImageFiles):
    """One labelled split read from ``root/<class>/<image>`` (torchvision ``ImageFolder`` layout).

    Class folders are sorted by name; label ``k`` is the ``k``-th folder. Class names are the
    folder names with underscores replaced by spaces (zero-shot prompts read them). Hidden
    entries and files without an image extension (``IMAGE_EXTENSIONS``) are ignored.

    Args:
        root: the folder that contains one sub-folder per class.
        split_name: used in ``name`` (``"<root name>/<split_name>"``).
        skip_corrupt: decode every image up front, skip the corrupt ones,
            record them in ``.skipped`` and warn with their count. Without it, a corrupt file
            raises ``DataError`` when it is decoded.
    """

    def __init__(
        self, root: str | Path, split_name: str | None = None, skip_corrupt: bool = False
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"image folder {self.root} does not exist; pass the folder that contains one "
                "sub-folder per class"
            )
        class_dirs = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        if not class_dirs:
            raise DataError(
                f"{self.root} contains no class folders; expected {self.root}/<class>/<images>"
            )
        self.skipped: list[Path] = []
        paths: list[Path] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            files = sorted(p for p in class_dir.iterdir() if is_image_file(p))
            bad: list[Path] = []
            if skip_corrupt:
                bad = [p for p in files if verify_image(p) is not None]
                self.skipped.extend(bad)
                files = [p for p in files if p not in set(bad)]
            if not files:
                corrupt = f", {len(bad)} corrupt file(s) skipped" if bad else ""
                raise DataError(
                    f"class folder {class_dir} contains no readable images (extensions "
                    f"{sorted(IMAGE_EXTENSIONS)}{corrupt}); remove the folder or add images to it"
                )
            paths.extend(files)
            labels.extend([label] * len(files))
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} corrupt image(s) under {self.root} "
                f"(first: {self.skipped[0]}); see .skipped",
                stacklevel=2,
            )
        self.class_dirs = [p.name for p in class_dirs]
        self.classnames = [name.replace("_", " ") for name in self.class_dirs]
        self.paths = paths
        self._labels = np.asarray(labels, dtype=np.int64)
        self.name = f"{self.root.name}/{split_name}" if split_name else self.root.name
        self.base_dir = self.root



class FileListImages(ImageFiles):
    """Images listed by path relative to ``base_dir``, with their labels and class names.

    One split of a folder data set (:mod:`pyro_clip.data.folder_splits`): every split keeps
    ``base_dir`` = the data set's root, so ``train/cat/1.png`` and ``test/cat/1.png`` never
    share a cache key. ``skip_corrupt`` drops unreadable files (:meth:`ImageFiles.drop_corrupt`).
    """

    def __init__(
        self,
        base_dir: Path,
        relpaths: list[str],
        labels: list[int] | np.ndarray,
        classnames: list[str],
        name: str,
        skip_corrupt: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.paths = [self.base_dir / rel for rel in relpaths]
        self._labels = np.asarray(labels, dtype=np.int64)
        self.classnames = list(classnames)
        self.name = name
        self.skipped = []
        if skip_corrupt:
            self.drop_corrupt()
