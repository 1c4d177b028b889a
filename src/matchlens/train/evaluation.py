"""Before/after evaluation of a training checkpoint through the real index path.

"Before" is the starting network (the run's ``--backbone``/``--weights``, GeM with the starting
p); "after" is the checkpoint loaded with ``--weights`` exactly as ``matchlens index`` would, with
no whitening and with its learned whitening Lw. Every pipeline is evaluated on each dataset with
whole-image queries (the ``full`` protocol: training uses whole images too); with ``groups`` the mAP is also reported over the queries of those groups
only (e.g. held-out landmarks).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Sequence

from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError
from matchlens.evaluate.protocol import dataset_paths, evaluate_index
from matchlens.io.formats import load_dataset
from matchlens.pipeline import Index

__all__ = ["checkpoint_spec", "evaluate_before_after"]


def checkpoint_spec(checkpoint: str | Path, whitening: str = "none") -> PipelineSpec:
    """The pipeline spec stored in a ``matchlens train`` checkpoint, loading that checkpoint."""
    from matchlens.models.weights import read_matchlens_meta

    meta = read_matchlens_meta(checkpoint)
    if meta is None:
        raise ConfigError(f"{checkpoint} is not a 'matchlens train' checkpoint")
    spec = dict(meta["spec"], weights=str(Path(checkpoint).resolve()), weights_id="")
    return PipelineSpec.from_dict(spec).replace(whitening=whitening)


def _starting_spec(checkpoint: str | Path) -> PipelineSpec:
    from matchlens.models.weights import read_matchlens_meta

    meta = read_matchlens_meta(checkpoint)
    if meta is None:
        raise ConfigError(f"{checkpoint} is not a 'matchlens train' checkpoint")
    config = meta["config"]
    return PipelineSpec(backbone=config["backbone"], weights=config["weights"], max_side=config["max_side"],
                        pooling="gem", pooling_params={"p": float(config["gem_p"])})


def evaluate_before_after(checkpoint: str | Path, datasets: Sequence[str], groups: Sequence[str] = (),
                          with_lw: bool = True, progress=None) -> list[dict[str, Any]]:
    """Rows ``{dataset, pipeline, mAP, queries, groups_mAP, groups_queries}`` for before / after / after+Lw."""
    from matchlens.models.weights import read_matchlens_meta

    pipelines = [("before", _starting_spec(checkpoint)), ("after", checkpoint_spec(checkpoint))]
    if with_lw and (read_matchlens_meta(checkpoint) or {}).get("lw"):
        pipelines.append(("after + Lw", checkpoint_spec(checkpoint, "lw")))
    rows = []
    for root in datasets:
        rows += _evaluate_one(root, pipelines, set(groups), progress)
    return rows


def _evaluate_one(root: str, pipelines, groups: set[str], progress) -> list[dict[str, Any]]:
    dataset = load_dataset(root)
    paths = dataset_paths(dataset)
    rows = []
    with tempfile.TemporaryDirectory(prefix="matchlens-train-eval-") as tmp:
        for label, spec in pipelines:
            # One folder per network, rebuilt per whitening: "after + Lw" reuses "after"'s descriptors.
            target = Path(tmp) / ("before" if label == "before" else "after")
            index = Index.build(paths, target, spec, rebuild=True, progress=progress)[0]
            evaluation = evaluate_index(index.pipeline, dataset, "full", progress=progress)
            chosen = [o.ap for o in evaluation.outcomes if o.query.group in groups]
            chosen = [ap for ap in chosen if not math.isnan(ap)]
            rows.append({
                "dataset": dataset.name, "pipeline": label, "spec": spec.describe(),
                "mAP": evaluation.summary.get("mAP"), "queries": evaluation.summary.get("queries"),
                "N-S": evaluation.summary.get("N-S"),
                "groups_mAP": 100 * sum(chosen) / len(chosen) if chosen else None,
                "groups_queries": len(chosen),
            })
    return rows
