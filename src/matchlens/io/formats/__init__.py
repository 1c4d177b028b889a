"""Readers of evaluation sets: ``gt.json`` sets and the official layouts of the standard
instance-retrieval benchmarks, one module per format, chosen by name or detected.

Every reader returns a :class:`~matchlens.io.datasets.Dataset`, so evaluation code never cares
where a set came from. Conventions shared by all readers of official layouts:

* Image names are relative to ``Dataset.image_dir`` and carry their extension
  (``"all_souls_000013.jpg"``); official lists name images without one, ``.jpg`` is added.
* Boxes are ``(x0, y0, x1, y1)`` as the ground truth gives them. Official boxes refer to the
  images as distributed, so they are in the pixels of the stored images only when those are the
  originals (no rescaling is done here; use gt.json for downscaled copies).
* **The official lists are kept exactly as published**, the query's own image included: Oxford's
  good lists (and the ``ok`` lists of ``gnd_oxford5k.mat``) contain the query itself, so a cropped
  query that finds its own photo scores a hit, as in every published Oxford5k/Paris6k figure;
  Holidays' ``junk`` is the query itself, so it is ignored there. The scorer
  (:func:`matchlens.evaluate.protocol.query_metrics`) ignores the query image only where the
  ground truth does not list it as a positive (gt.json sets).
* Queries whose positive set is empty (possible in revisitop's Hard protocol) are kept: their AP
  is NaN and :func:`~matchlens.evaluate.metrics.mean_average_precision` skips them, as revisitop
  does.
* Every malformed input raises a one-line :class:`~matchlens.errors.SourceError` naming the file.

Modules (each registers its format names in :data:`DATASET_FORMATS`, the only list of them):

* :mod:`~matchlens.io.formats.gtjson` - ``gt.json`` + ``images/`` (:func:`load_gt_json`);
* :mod:`~matchlens.io.formats.oxford` - Oxford5k / Paris6k classic text files
  (:func:`load_oxford_classic`);
* :mod:`~matchlens.io.formats.gnd` - one official ground-truth file, ``.mat``/``.pkl``/``.json``
  (:func:`load_gnd_file`), read with the safe unpickler and ``.mat`` readers of
  :mod:`~matchlens.io.formats.loaders`;
* :mod:`~matchlens.io.formats.revisited` - ROxford5k / RParis6k with the optional R1M
  distractors (:func:`load_revisited`);
* :mod:`~matchlens.io.formats.holidays`, :mod:`~matchlens.io.formats.ukbench`,
  :mod:`~matchlens.io.formats.instre` - INRIA Holidays, UKBench, INSTRE;
* :mod:`~matchlens.io.formats.detect` - :func:`load_dataset` (by format name, or detected with
  :func:`detect_format`);
* :mod:`~matchlens.io.formats.common` - the helpers the readers share.
"""

from matchlens.io.formats.common import DATASET_FORMATS
from matchlens.io.formats.gtjson import DEFAULT_ORIGINAL_LONGEST_SIDE, load_gt_json
from matchlens.io.formats.oxford import load_oxford_classic
from matchlens.io.formats.gnd import PROTOCOLS, load_gnd_file
from matchlens.io.formats.revisited import load_revisited
from matchlens.io.formats.holidays import HOLIDAYS_UPRIGHT_DIR, load_holidays
from matchlens.io.formats.ukbench import load_ukbench
from matchlens.io.formats.instre import load_instre
from matchlens.io.formats.detect import detect_format, load_dataset

__all__ = [
    "DATASET_FORMATS",
    "DEFAULT_ORIGINAL_LONGEST_SIDE",
    "HOLIDAYS_UPRIGHT_DIR",
    "PROTOCOLS",
    "detect_format",
    "load_dataset",
    "load_gnd_file",
    "load_gt_json",
    "load_holidays",
    "load_instre",
    "load_oxford_classic",
    "load_revisited",
    "load_ukbench",
]
