"""Query quality for retrieval (QAIR, P1f): predict the AP a query reaches with one index's
pipeline, say what looks wrong with it, and enhance it for retrieval.

One file per method: :mod:`features` (no-reference estimates: noise σ, detail, size, exposure),
:mod:`patches` (the network's input), :mod:`net` (frozen backbone + 5 FC layers),
:mod:`labels` (labels with ground truth, or self-supervised on the user's index), :mod:`dncnn`
(DnCNN), :mod:`sr` (×4 SR variant), :mod:`nlmeans` (OpenCV baseline), :mod:`enhance`
(fine-tuning through the frozen quality net, feature adaptation), :mod:`auto` (``--enhance``),
:mod:`store` (model files that know their index), :mod:`predict`, :mod:`train`,
:mod:`location` (where an index's models live; torch-free).
The package root imports nothing, so ``matchlens.quality.location`` answers "is there a quality
model?" on every search without loading PyTorch; the other modules import it (import them inside
functions, see the layer contract).
"""

from __future__ import annotations
