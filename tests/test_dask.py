"""Distributed extraction on a local Dask cluster (two worker processes bound to 127.0.0.1)."""

from __future__ import annotations

import numpy as np
import pytest

import matchlens
from matchlens.errors import SourceError
from matchlens.extract import Extractor
from matchlens.extract.distributed import describe_files_dask
from matchlens.pipeline import Interrupted
from tests.conftest import require_module, run_cli

distributed = require_module("distributed")


@pytest.fixture(scope="module")
def cluster():
    """LocalCluster(n_workers=2, processes=True, threads_per_worker=1) on loopback, no dashboard."""
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as local:
        yield local


@pytest.fixture(scope="module")
def local_descriptors(scenes_dir, small_spec):
    paths = sorted(str(p) for p in scenes_dir.glob("*.jpg"))
    return {item.path: item for item in Extractor(small_spec).describe_files(paths)}


def test_cluster_is_bound_to_loopback(cluster) -> None:
    info = cluster.scheduler_info
    addresses = [cluster.scheduler_address, *info["workers"]]
    assert len(info["workers"]) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in addresses)


def test_workers_return_the_local_descriptors(cluster, scenes_dir, small_spec, local_descriptors, tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    paths = [*sorted(local_descriptors), str(bad)]
    items = {item.path: item for item in describe_files_dask(paths, small_spec, cluster.scheduler_address, batch=3)}
    assert sorted(items) == sorted(paths)  # every path once, in any order
    assert items[str(bad)].vector is None and items[str(bad)].error
    for path, local in local_descriptors.items():
        assert items[path].sha256 == local.sha256 and items[path].error is None
        np.testing.assert_allclose(items[path].vector, local.vector, rtol=0, atol=1e-5)
    # both workers took part, and each built its extractor once (then reused it)
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        counts = client.run(lambda: len(__import__("matchlens.extract.distributed", fromlist=["x"])._WORKER_EXTRACTORS))
    finally:
        client.close()
    assert sorted(counts.values()) == [1, 1]


def test_index_built_on_the_cluster_equals_the_local_index(cluster, scenes_dir, small_spec, built_index,
                                                          tmp_path) -> None:
    index, report = matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec,
                                                 dask=cluster.scheduler_address)
    assert report.computed == 10 and index.size == 10
    by_path = {e.path: np.asarray(index.vectors()[e.row]) for e in index.entries}
    for entry in built_index.entries:
        np.testing.assert_allclose(by_path[entry.path], built_index.vectors()[entry.row], atol=1e-5)
    assert index.search(scenes_dir / "scene_04.jpg", k=1)[0].path.endswith("scene_04.jpg")


def test_an_interrupted_distributed_build_resumes_from_the_journal(cluster, scenes_dir, small_spec, tmp_path,
                                                                  monkeypatch) -> None:
    from matchlens.extract import distributed as dist

    real = dist.describe_files_dask

    def stop_after_four(*args, **kwargs):
        for count, item in enumerate(real(*args, **kwargs)):
            if count == 4:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(dist, "describe_files_dask", stop_after_four)
    with pytest.raises(Interrupted, match="interrupted after 4 of 10"):
        matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec, dask=cluster.scheduler_address)
    monkeypatch.undo()
    index, report = matchlens.build_index_report(scenes_dir, tmp_path / "i", small_spec,
                                                 dask=cluster.scheduler_address)
    assert (report.reused, report.computed, index.size) == (4, 6, 10)


def test_unreachable_scheduler_is_one_line(tmp_path, scenes_dir, small_spec, capsys, monkeypatch) -> None:
    from matchlens.extract import distributed as dist

    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", "2s")
    with pytest.raises(SourceError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        list(describe_files_dask([str(scenes_dir / "scene_00.jpg")], small_spec, "127.0.0.1:9"))
    code, _, err = run_cli(capsys, "index", scenes_dir, "-i", tmp_path / "i", "--max-side", "128", "-q",
                           "--dask", "tcp://127.0.0.1:9")
    assert code == 2 and err.count("\n") == 1 and "cannot reach the Dask scheduler" in err
