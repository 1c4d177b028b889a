"""The layer contract of DESIGN.md (pyproject's [tool.matchlens.architecture]) holds: no import
goes upwards, independent packages stay independent, no cycles, and only the listed heavy
modules are imported inside functions. The same check runs in .ci/run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checker():
    spec = importlib.util.spec_from_file_location("check_architecture", ROOT / "tools" / "check_architecture.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_architecture"] = module
    spec.loader.exec_module(module)
    return module


def test_the_layer_contract_holds() -> None:
    problems = _checker().check()
    assert problems == [], "\n".join(problems[:40])


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch) -> None:
    checker = _checker()
    layers, deferred = checker.load_contract()
    assert checker.layer_of("matchlens.index.vectors", layers)[1] == "matchlens.index"
    assert checker.layer_of("matchlens.pipeline", layers)[0] < checker.layer_of("matchlens.index", layers)[0]
    module = tmp_path / "src" / "matchlens" / "index" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("from matchlens.pipeline import SearchPipeline\n\ndef f():\n    import json\n")
    monkeypatch.setattr(checker, "SRC", tmp_path / "src")
    found = checker.imports_of(module)
    assert ("matchlens.pipeline", 1, False) in found and ("json", 4, True) in found
    assert not checker.deferred_ok("matchlens.index.bad", "json", deferred)
    assert checker.deferred_ok("matchlens.extract.light", "torch", deferred)
    assert checker.cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
