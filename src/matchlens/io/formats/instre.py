"""INSTRE as packaged by Iscen et al.: ``gnd_instre.mat`` + the image tree."""

from __future__ import annotations

from matchlens.io.datasets import Dataset
from matchlens.io.formats.common import DATASET_FORMATS, PathLike, existing_dir
from matchlens.io.formats.gnd import dataset_from_gnd, read_gnd

__all__ = ["load_instre"]


@DATASET_FORMATS.register("instre")
def load_instre(root: PathLike, check_images: bool = True) -> Dataset:
    """Read INSTRE as packaged by Iscen et al.: ``root/gnd_instre.mat`` + the image tree.

    ``imlist`` and ``qimlist`` hold paths relative to ``root`` with their extension
    (``INSTRE-S1/01a_canada_book/001.jpg``); ``gnd`` has 1-based ``ok`` and ``bbx``
    (``x0 y0 x1 y1``). Group = the query's class folder.

    Raises:
        SourceError: missing or malformed ``gnd_instre.mat``, or a missing image.
    """
    root = existing_dir(root, "dataset folder")
    gnd_path = root / "gnd_instre.mat"
    return dataset_from_gnd(
        read_gnd(gnd_path), gnd_path, "instre", root, protocol=None,
        check_images=check_images, kind="instre",
    )
