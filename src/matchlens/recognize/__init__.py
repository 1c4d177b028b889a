"""Retrieve, then identify: long-tailed recognition (BBN, P1k; SICoT, P1l) and a kNN-vote baseline.

:mod:`.labels` (labelled images and titles), :mod:`.network` (the backbone split into a frozen or
trainable trunk and one or two copies of its last stage), :mod:`.heads` (the method registry: ``ce``,
``rs``, ``rw``), :mod:`.bbn` (``bbn``), :mod:`.sicot` (the title stream), :mod:`.fit` (training),
:mod:`.model` (``rec.pt`` and predictions), :mod:`.knn` (the retrieval-only vote), :mod:`.identify`
(``--identify`` of search and serve).
"""

from matchlens.recognize import bbn  # noqa: F401  (registers the "bbn" method)
from matchlens.recognize.fit import FitResult, RecognizerConfig, fit, train_recognizer
from matchlens.recognize.heads import METHODS
from matchlens.recognize.identify import Identifier, open_identifier
from matchlens.recognize.knn import KnnVote, knn_predict, vote
from matchlens.recognize.labels import LabelledSet, read_labelled, read_titles
from matchlens.recognize.model import Prediction, Recognizer, check_backbone, load_recognizer, save_recognizer
from matchlens.recognize.network import RecognitionNet, image_batch, split_backbone, trunk_features

__all__ = ["METHODS", "FitResult", "Identifier", "open_identifier", "KnnVote", "LabelledSet", "Prediction", "RecognitionNet", "Recognizer",
           "RecognizerConfig", "check_backbone", "fit", "image_batch", "knn_predict", "load_recognizer",
           "read_labelled", "read_titles", "save_recognizer", "split_backbone", "train_recognizer",
           "trunk_features", "vote"]
