"""ROxford5k / RParis6k in the revisitop layout (``<root>/<name>/gnd_<name>.pkl`` + ``jpg/``):
Easy/Medium/Hard protocols and the optional R1M distractors.

R1M distractors are named by their ABSOLUTE path (``Dataset.image_path`` returns an absolute
name unchanged, since ``image_dir / "/abs/x.jpg"`` is ``/abs/x.jpg``): they live outside the
dataset's folder and can never collide with its relative names.
"""

from __future__ import annotations

from pathlib import Path

from matchlens.errors import SourceError
from matchlens.io.datasets import Dataset
from matchlens.io.formats.common import (DATASET_FORMATS, PathLike, check_images_exist, existing_dir, read_names,
                                         safe_name)
from matchlens.io.formats.gnd import check_protocol, dataset_from_gnd, name_from_file, read_gnd

__all__ = ["load_revisited"]


def load_revisited(
    root: PathLike,
    name: str | None = None,
    protocol: str = "medium",
    *,
    distractors: PathLike | None = None,
    check_images: bool = True,
) -> Dataset:
    """Read ROxford5k / RParis6k as revisitop and cirtorch lay them out.

    Layout: ``<root>/<name>/gnd_<name>.pkl`` and ``<root>/<name>/jpg/<image>.jpg`` (``root``
    may also be the ``<name>`` folder itself). The pickle holds ``imlist``, ``qimlist`` and
    ``gnd``, a list of dicts with 0-based ``easy``, ``hard``, ``junk`` and ``bbx``; it is read
    with an unpickler that refuses anything but plain data and numpy arrays.

    Protocols (revisitop's ``example_evaluate.py``): ``easy``: positives = easy, junk = junk ∪
    hard; ``medium``: positives = easy ∪ hard, junk = junk; ``hard``: positives = hard, junk =
    junk ∪ easy. Queries are not database images; queries without positives are kept.

    Args:
        root: the folder holding ``<name>/`` (or the ``<name>`` folder).
        name: ``roxford5k``, ``rparis6k`` or another ``gnd_<name>.pkl`` (default: the only
            ``gnd_r*.pkl`` found).
        protocol: ``easy``, ``medium`` or ``hard``.
        distractors: the ``revisitop1m`` folder (``revisitop1m.txt``, one path per line
            relative to its ``jpg/``); its images are appended to the database under their
            ABSOLUTE paths, which ``Dataset.image_path`` returns unchanged.
        check_images: verify every image (distractors included) exists.

    Raises:
        SourceError: missing/unsafe/malformed pickle, unknown protocol, missing image.
    """
    chosen = check_protocol(protocol)
    data_dir, gnd_path, dataset_name = _revisited_paths(existing_dir(root, "dataset folder"), name)
    extra = _read_distractors(distractors, check_images) if distractors is not None else []
    return dataset_from_gnd(
        read_gnd(gnd_path), gnd_path, dataset_name, data_dir / "jpg", protocol=chosen,
        check_images=check_images, kind=None, extra_images=extra,
    )


def _revisited_paths(root: Path, name: str | None) -> tuple[Path, Path, str]:
    """(data folder, gnd pickle, name), accepting the parent folder or the dataset folder."""
    if name is None:
        found = sorted(root.glob("gnd_r*.pkl")) or sorted(root.glob("*/gnd_r*.pkl"))
        if len(found) != 1:
            raise SourceError(
                f"{root}: expected exactly one gnd_r*.pkl (found {len(found)}); pass name="
            )
        return found[0].parent, found[0], name_from_file(found[0])
    for data_dir in (root, root / name):
        gnd_path = data_dir / f"gnd_{name}.pkl"
        if gnd_path.is_file():
            return data_dir, gnd_path, name
    raise SourceError(f"ground-truth file not found: {root / name / f'gnd_{name}.pkl'}")


def _read_distractors(folder: PathLike, check_images: bool) -> list[str]:
    """Absolute paths of the R1M distractors listed in ``revisitop1m.txt``."""
    root = existing_dir(folder, "distractor folder")
    list_path = root / "revisitop1m.txt"
    image_dir = (root / "jpg").absolute()
    names = [safe_name(n, list_path) for n in read_names(list_path)]
    if not names:
        raise SourceError(f"{list_path} lists no images")
    if check_images:
        check_images_exist(names, image_dir, list_path)
    return [str(image_dir / n) for n in names]


@DATASET_FORMATS.register("roxford5k")
def _load_roxford5k(root: PathLike, protocol: str = "medium", distractors: PathLike | None = None,
                    check_images: bool = True) -> Dataset:
    """ROxford5k (revisitop layout)."""
    return load_revisited(root, "roxford5k", protocol, distractors=distractors,
                          check_images=check_images)


@DATASET_FORMATS.register("rparis6k")
def _load_rparis6k(root: PathLike, protocol: str = "medium", distractors: PathLike | None = None,
                   check_images: bool = True) -> Dataset:
    """RParis6k (revisitop layout)."""
    return load_revisited(root, "rparis6k", protocol, distractors=distractors,
                          check_images=check_images)


@DATASET_FORMATS.register("revisited")
def _load_revisited_any(root: PathLike, protocol: str = "medium",
                        distractors: PathLike | None = None, check_images: bool = True) -> Dataset:
    """Whichever ``gnd_r*.pkl`` the folder holds (what auto-detection picks)."""
    return load_revisited(root, None, protocol, distractors=distractors,
                          check_images=check_images)
