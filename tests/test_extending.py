"""docs/extending.md's worked examples, executed: a pooling (2 files), a re-ranker (1), a backend (1).

Each code block starts with ``# file: PATH``; the blocks are run as the file they say they are
(appended to the pooling modules, or a new module found by the package's own discovery), so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from matchlens.components import Component, in_range, one_of, optional, positive_int
from matchlens.config import PipelineSpec
from matchlens.errors import ConfigError
from matchlens.registry import Registry, import_submodules

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def blocks() -> dict[str, str]:
    """``{path: code}`` of every python block of the document (path from its ``# file:`` line)."""
    found = {}
    for code in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S):
        first = code.splitlines()[0]
        match = re.match(r"# file: (\S+)", first)
        assert match, f"block without a '# file:' line: {first!r}"
        found[match.group(1)] = code
    return found


def as_new_module(package, code: str, path: str, tmp_path: Path, monkeypatch) -> None:
    """Write ``code`` as a new module of ``package`` (in a folder added to its path) and run the
    package's own discovery, as if the file had been added to the source tree."""
    folder = tmp_path / package.__name__.replace(".", "_")
    folder.mkdir()
    (folder / Path(path).name).write_text(code, encoding="utf-8")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.delitem(sys.modules, f"{package.__name__}.{Path(path).stem}", raising=False)
    assert Path(path).stem in import_submodules(package)


def test_the_document_has_the_three_examples() -> None:
    assert set(blocks()) == {"src/matchlens/pooling/functional.py", "src/matchlens/pooling/specs.py",
                             "src/matchlens/rerank/rescore.py", "src/matchlens/index/backends/float16_backend.py"}


# --- pooling: functional.py + specs.py -----------------------------------------------------------
@pytest.fixture
def lse_pooling(monkeypatch):
    torch = pytest.importorskip("torch")
    from matchlens.pooling import POOLINGS, functional, specs

    code = blocks()
    maths = dict(vars(functional))
    exec(compile(code["src/matchlens/pooling/functional.py"], "functional.py", "exec"), maths)
    monkeypatch.setattr(functional, "lse", maths["lse"], raising=False)
    namespace = dict(vars(specs))
    exec(compile(code["src/matchlens/pooling/specs.py"], "specs.py", "exec"), namespace)
    yield torch, POOLINGS
    POOLINGS.unregister("lse")


def test_pooling_example(lse_pooling) -> None:
    torch, poolings = lse_pooling
    from matchlens.pooling import mac, make_pooling

    assert "lse" in poolings and poolings.get("lse").name == "lse"
    spec = PipelineSpec(pooling="lse", pooling_params={"r": 5.0})
    assert spec.describe().split()[3] == "lse(r=5)"
    module = make_pooling(spec.pooling, **spec.pooling_params)
    assert module.name == "lse" and module.params() == {"r": 5.0}
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    # between average and max pooling; MAC as r grows
    assert torch.all(module(x) <= mac(x) + 1e-9) and torch.all(module(x) >= x.mean(dim=(-2, -1)) - 1e-9)
    torch.testing.assert_close(make_pooling("lse", r=1e4)(x), mac(x), atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="r must be a finite number > 0") as info:
        make_pooling("lse", r=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="valid: r"):
        make_pooling("lse", p=3)


def test_unknown_pooling_lists_the_registry() -> None:
    with pytest.raises(ConfigError, match="unknown pooling 'nope'; choose one of: crow, gem, learned-rmac, mac, rmac, spoc"):
        PipelineSpec(pooling="nope")


# --- re-ranker: one new module in rerank/ --------------------------------------------------------
class TinyContext:
    """The part of a RerankContext the example needs."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors


def test_reranker_example(tmp_path, monkeypatch) -> None:
    import matchlens.rerank as rerank
    from matchlens.rerank import RERANKERS, QueryInput, Shortlist, describe_chain, parse_chain

    as_new_module(rerank, blocks()["src/matchlens/rerank/rescore.py"], "rescore.py", tmp_path, monkeypatch)
    try:
        assert "rescore" in RERANKERS and "rescore" in RERANKERS.help_text().split(" | ")
        chain = parse_chain("rescore:k=5")
        assert describe_chain(chain) == "rescore:k=5" and chain[0].params() == {"k": 5}
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(20, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        query = QueryInput(vectors[7])
        rows = np.array([3, 7, 1, 9, 12, 4, 5, 0])  # 7 (the query itself) second
        shortlist = Shortlist(rows, np.linspace(1.0, 0.3, len(rows)))
        out = chain[0].rerank(query, shortlist, TinyContext(vectors))
        assert out.rows[0] == 7 and sorted(out.rows[:5]) == sorted(rows[:5])  # the head re-sorted exactly
        assert list(out.rows[5:]) == list(rows[5:]) and np.all(np.diff(out.scores) <= 0)
        with pytest.raises(ConfigError, match="reranker 'rescore': k must be an integer >= 1, got 0"):
            parse_chain("rescore:k=0")
        with pytest.raises(ConfigError, match="valid: k"):
            parse_chain("rescore:depth=3")
    finally:
        RERANKERS.unregister("rescore")


# --- backend: one new module in index/backends/ ---------------------------------------------------
def test_backend_example(tmp_path, monkeypatch) -> None:
    from matchlens.index import backends
    from matchlens.index.backends import BACKENDS, Searcher, WriteJob, backend_from_dict, make_backend

    as_new_module(backends, blocks()["src/matchlens/index/backends/float16_backend.py"], "float16_backend.py",
                  tmp_path, monkeypatch)
    try:
        backend = make_backend("float16", refine=2)
        assert backend.params() == {"refine": 2, "batch": 1024} and backend.factory == "F16"
        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(50, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = np.arange(100, 150, dtype=np.int64)  # stable ids differ from rows
        gen = tmp_path / "gen"
        gen.mkdir()
        state = backend.write(WriteJob(root=tmp_path, tmp=gen, vectors=vectors, ids=ids))
        again = backend_from_dict({**backend.to_dict(), "state": state})  # as read back from a manifest
        id_to_row = np.full(int(ids.max()) + 1, -1, dtype=np.int64)
        id_to_row[ids] = np.arange(len(ids))
        searcher = Searcher(again, again.open(tmp_path, gen, state), id_to_row, vectors)
        scores, rows = searcher.search(vectors[[4, 30]], 5)
        assert list(rows[:, 0]) == [4, 30] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
        exact = np.argsort(-(vectors[[4, 30]] @ vectors.T), axis=1)[:, :5]
        np.testing.assert_array_equal(rows, exact)
        _, short = again.open(tmp_path, gen, state)(vectors[:1], 60)  # more than there are: -1 padded
        assert (short[0, 50:] == -1).all() and set(short[0, :50]) == set(ids)
        with pytest.raises(ConfigError, match="backend 'float16': batch must be an integer >= 1"):
            make_backend("float16", batch=0)
    finally:
        BACKENDS.unregister("float16")


# --- the base class itself --------------------------------------------------------------------------
def test_component_base_and_validators() -> None:
    things: Registry[type[Component]] = Registry("thing")

    @things.register("widget")
    class Widget(Component):
        """A widget."""

        kind = "thing"
        defaults = {"size": 3, "mode": "fast", "ratio": 0.5, "limit": None}

        def validate(self) -> None:
            self.check("size", positive_int)
            self.check("mode", one_of, ("fast", "slow"))
            self.check("ratio", in_range, 0.0, 1.0, low_open=True)
            self.check("limit", optional, positive_int)

    assert Widget.name == "widget"  # set by the registry
    w = Widget(size=5)
    assert w.params() == {"size": 5, "mode": "fast", "ratio": 0.5, "limit": None} and w.params["size"] == 5
    assert repr(w) == "widget:size=5,mode=fast,ratio=0.5,limit=None"
    assert things.help_text() == "widget" and things.describe().startswith("widget(size=3, mode='fast'")
    for bad, message in [({"colour": 1}, "thing 'widget' has no parameter colour; valid: size, mode, ratio, limit"),
                         ({"size": 0}, "thing 'widget': size must be an integer >= 1, got 0"),
                         ({"size": True}, "size must be an integer"), ({"size": 2.0}, "size must be an integer"),
                         ({"mode": "medium"}, "mode must be one of fast, slow, got 'medium'"),
                         ({"ratio": 0}, r"ratio must be a number in \(0, 1\], got 0"),
                         ({"limit": -1}, "limit must be an integer >= 1")]:
        with pytest.raises(ConfigError, match=message) as info:
            Widget(**bad)
        assert "\n" not in str(info.value)


def test_no_registered_class_writes_its_name() -> None:
    """Registries set ``name``; a registered class that also wrote it would say it twice."""
    import matchlens.classic  # noqa: F401
    import matchlens.fusion  # noqa: F401
    import matchlens.index.backends  # noqa: F401
    import matchlens.pooling  # noqa: F401
    import matchlens.rerank  # noqa: F401
    from matchlens.classic import ENCODINGS
    from matchlens.fusion import FUSIONS
    from matchlens.index.backends import BACKENDS
    from matchlens.pooling import POOLINGS
    from matchlens.rerank import RERANKERS

    for registry in (ENCODINGS, FUSIONS, BACKENDS, POOLINGS, RERANKERS):
        for name in registry.names():
            cls = registry.get(name)
            assert cls.name == name
            source = Path(sys.modules[cls.__module__].__file__).read_text(encoding="utf-8")
            assert not re.search(rf"^\s+name(: ClassVar\[str\])? = \"{name}\"", source, flags=re.M), cls
