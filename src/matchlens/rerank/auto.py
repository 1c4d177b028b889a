"""``auto``: spatially verified query expansion that adapts to each query (after Chum et al. ICCV'07).

Fixed chains help one collection and hurt another: ``alpha_qe:k=10`` adds ten neighbours to every
query, right or wrong, which pulls a query whose object has two other views towards unrelated
images. Chum et al.'s average query expansion expands only with *verified* images. So:

1. verify the top ``k`` of the shortlist by local-feature geometry (:mod:`matchlens.rerank.spatial`);
   an image with at least ``min_inliers`` inliers is verified;
2. if any verified image has at least ``expand_inliers`` inliers (default: ``min_inliers``), the
   query is expanded with all of them — q' = L2(q + Σ d_v), the average form; the number comes
   from the verification, never a constant — and the collection is searched again;
3. ``order=blend`` (default): every image is scored by its cosine to the expanded query plus
   ``bonus`` × min(inliers, ``cap``) / ``cap`` when verified, so verification lifts an image
   without letting a chance geometric match (a few dozen inliers on a repetitive texture) jump
   over images the descriptors are sure of; ``order=verified``: Chum's order, verified images
   first by inliers, then the expanded ranking;
4. with ``rounds`` > 1 the top ``k_next`` images of the expanded ranking that were not verified
   yet are verified in turn and the expansion is redone (a bounded transitive closure).

A query with no verified neighbour keeps its ranking unchanged (unless the graph gate below is
on): ``auto`` falls back to plain search, which is what protects collections where expansion hurts. The defaults were
chosen on oxford5k_subset, ukbench_subset and the demo collection (see the README's re-ranking
table): they are not tuned on held-out data.

Two more steps switch themselves on only where the index supports them:

- ``fuse``: when the index stores classic kinds (BoW, ASMK), the shortlist to verify is ranked
  by the fusion of cnn with them that the README's classic table recommends, and so is the
  expanded query (its cnn part is the expanded vector; the kinds keep the query image), so the
  fusion's gain is kept after expansion (the context must offer :class:`FusingContext`;
  otherwise, and with ``fuse=none``, the input shortlist and cnn alone are used);
- ``graph``: database-side augmentation (computed for the top ``k`` only) and diffusion run on
  the (expanded) ranking when the collection's kNN graph has dense reciprocal neighbourhoods —
  objects with many views — as measured once per generation by :mod:`matchlens.rerank.graph`;
  both use the measured neighbourhood size as their number of neighbours (at least 3 when
  forced with ``graph=on``). As fixed chains they hurt where objects have few views
  (oxford5k_subset, ukbench_subset, the demo collection: README), where the gate measures no
  such neighbourhoods; the ranking's scores are then scaled so that the top one is 1.

``last_decision`` records, per query, the fusion used, the graph profile and whether the graph
steps ran, each with its reason.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import numpy as np

from matchlens.components import non_negative_float, non_negative_int, one_of, positive_int
from matchlens.errors import ConfigError
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist
from matchlens.rerank.diffusion import Diffusion
from matchlens.rerank.graph import GraphProfile, augmented_scores, graph_profile
from matchlens.rerank.qe import expanded_query
from matchlens.rerank.spatial import SpatialVerification

__all__ = ["AutoRerank", "FusingContext", "recommended_fusion"]

# The README's classic table: the best measured fusion of cnn with each combination of stored
# kinds on oxford5k_subset (mean_power with ASMK, the generalised harmonic mean with BoW alone).
_FUSIONS = ((("bow", "asmk"), "mean_power"), (("asmk",), "mean_power"), (("bow",), "ghm"))


@runtime_checkable
class FusingContext(Protocol):
    """What a context offers when its index stores classic kinds (the pipeline's context does)."""

    def stored_kinds(self) -> dict[str, str]:
        """Name -> type (``bow``, ``asmk``, ...) of every classic kind stored with the index."""

    def fused_shortlist(self, query: QueryInput, fusion: str, depth: int) -> Shortlist:
        """The query ranked by ``fusion`` (e.g. ``"cnn+asmk:mean_power"``), at least ``depth`` rows."""


def recommended_fusion(kinds: Mapping[str, str]) -> str | None:
    """The fusion of cnn with the stored ``kinds`` (name -> type) that the README recommends, or
    None when no stored kind has one (no fusion with VLAD or DenseVLAD has been measured)."""
    by_type: dict[str, str] = {}
    for name, type_name in sorted(kinds.items()):
        by_type.setdefault(type_name, name)  # one kind per type: the first by name
    for types, operator in _FUSIONS:
        if all(t in by_type for t in types):
            return "+".join(["cnn", *(by_type[t] for t in types)]) + f":{operator}"
    return None


@RERANKERS.register("auto")
class AutoRerank(Reranker):
    """Verified average query expansion; see the module docstring.

    Parameters: ``k`` (shortlist entries verified first), ``min_inliers`` (inliers that make an
    image verified), ``expand_inliers`` (inliers that make a verified image join the expanded
    query; 0: the same as ``min_inliers``), ``rounds`` (verification rounds), ``k_next`` (images
    verified in each later round), ``max_keypoints`` (RootSIFT features per image), ``order``
    (``blend`` or ``verified``), ``bonus`` and ``cap`` (the blend's lift for a verified image),
    ``graph`` (``auto``: DBA and diffusion when the kNN graph supports them; ``on``; ``off``),
    ``steps`` (which graph steps run when on: ``both``, ``dba`` or ``diffusion``),
    ``fuse`` (``auto``: the recommended fusion of the stored kinds; ``none``; or a fusion, written
    as the first parameter in a chain when it names an operator: ``auto:fuse=cnn+asmk:ghm,k=50``,
    as a later parameter its ``:`` would start a new step).
    After :meth:`rerank`, ``last_expansion`` holds the rows the query was expanded with and
    ``last_decision`` what was decided and why (fusion, graph profile, graph steps).
    """

    needs_image = True
    defaults: ClassVar[dict[str, Any]] = {"k": 100, "min_inliers": 12, "expand_inliers": 0, "rounds": 1,
                                          "k_next": 20, "max_keypoints": 1000, "order": "blend", "bonus": 0.3,
                                          "cap": 100, "graph": "auto", "steps": "both", "fuse": "auto"}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.verifier = SpatialVerification(k=self.config["k"], min_inliers=self.config["min_inliers"],
                                            max_keypoints=self.config["max_keypoints"])
        self.last_expansion: list[int] = []
        self.last_decision: dict[str, Any] = {}
        # Per-process memos keyed by generation: the profile and the diffusion graph are read once.
        self._profiles: dict[tuple[str, int], GraphProfile] = {}
        self._diffusion: Diffusion | None = None

    def validate(self) -> None:
        """One-line ConfigError for any parameter out of range."""
        for key in ("k", "min_inliers", "rounds", "k_next", "max_keypoints"):
            self.check(key, positive_int)
        self.check("expand_inliers", non_negative_int)
        self.check("order", one_of, ("verified", "blend"))
        self.check("bonus", non_negative_float)
        self.check("cap", positive_int)
        self.check("graph", one_of, ("auto", "on", "off"))
        self.check("steps", one_of, ("both", "dba", "diffusion"))
        fuse = self.config["fuse"]
        if not isinstance(fuse, str) or not fuse.strip():
            raise ConfigError(f"{self.label()}: fuse must be auto, none or a fusion such as cnn+asmk:mean_power, "
                              f"got {fuse!r}")

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """The ranking of the query expanded with its verified images (see ``order``), through
        DBA and diffusion when the graph supports them; the (fused) shortlist unchanged when
        nothing verifies and the graph is off, or when the query has no image."""
        self.last_expansion, self.last_decision = [], {}
        shortlist = self._initial(query, shortlist, ctx)
        self.verifier.rerank(query, shortlist, ctx)  # only its inlier counts are used
        inliers = dict(self.verifier.last_inliers)
        if query.image is None:
            return shortlist
        result = self._expanded(query, shortlist, inliers, ctx)
        for _ in range(self.config["rounds"] - 1):
            fresh = [int(r) for r in result.rows if int(r) not in inliers][: self.config["k_next"]]
            if not fresh or not self._expansion_rows(inliers):
                break
            # Only the inlier counts of this verification are used, not its ordering.
            self.verifier.rerank(query, Shortlist(np.array(fresh), np.zeros(len(fresh))), ctx)
            inliers.update(self.verifier.last_inliers)
            result = self._expanded(query, shortlist, inliers, ctx)
        return result

    # --- the initial shortlist: fused when the index stores classic kinds ------------------------
    def _initial(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """The shortlist ranked by the fusion ``fuse`` asks for, or the input one."""
        fusion, why = self._fusion(ctx)
        self.last_decision.update(fuse=fusion, fuse_why=why)
        if fusion is None or query.image is None:
            return shortlist
        assert isinstance(ctx, FusingContext)  # _fusion returns None otherwise
        return ctx.fused_shortlist(query, fusion, max(len(shortlist), self.config["k"])).valid()

    def _search(self, query: QueryInput, depth: int, ctx: RerankContext) -> Shortlist:
        """The expanded query's ranking: by the same fusion as the shortlist, its cnn part being
        the expanded vector (the kinds keep the query image), or by cnn alone."""
        fusion = self.last_decision.get("fuse")
        if fusion is not None and isinstance(ctx, FusingContext):
            return ctx.fused_shortlist(query, fusion, depth).valid()
        scores, rows = ctx.search(query.vector[None, :], depth)
        return Shortlist(rows[0], scores[0]).valid()

    def _fusion(self, ctx: RerankContext) -> tuple[str | None, str]:
        """(fusion to rank the shortlist by or None, why)."""
        setting = self.config["fuse"].strip()
        if setting == "none":
            return None, "fuse=none"
        if not isinstance(ctx, FusingContext):
            return None, "the index offers no stored kinds"
        if setting != "auto":
            return setting, "fuse given"
        kinds = ctx.stored_kinds()
        fusion = recommended_fusion(kinds)
        return fusion, (f"stored kinds {', '.join(sorted(kinds))}" if kinds else "no stored kinds")

    # --- the graph gate ---------------------------------------------------------------------------
    def _graph_on(self, ctx: RerankContext) -> bool:
        """Whether DBA and diffusion run: forced by ``graph``, else what the kNN graph supports."""
        setting = self.config["graph"]
        profile = self._profile(ctx) if setting == "auto" else None
        on = setting == "on" or (profile is not None and profile.supports())
        why = (f"graph={setting}" if profile is None else
               f"{'supports' if on else 'does not support'} DBA and diffusion: {profile.describe()}")
        self.last_decision.update(graph=on, graph_why=why, profile=profile.to_dict() if profile else None)
        return on

    def _profile(self, ctx: RerankContext) -> GraphProfile:
        key = (ctx.generation, len(ctx.vectors))
        if key not in self._profiles:
            self._profiles[key] = graph_profile(ctx)
        return self._profiles[key]

    def _graph_steps(self, vector: np.ndarray, ranking: Shortlist, ctx: RerankContext) -> Shortlist:
        """``ranking`` re-scored against DBA-augmented vectors, then diffused (see the module docstring)."""
        if not len(ranking) or not self._graph_on(ctx):
            return ranking
        size = self._neighbourhood(ctx)
        steps = self.config["steps"]
        if steps in ("both", "dba"):
            head = ranking.head(self.config["k"])
            scores = augmented_scores(ctx, vector, head.rows, size)
            order = np.argsort(-scores, kind="stable")
            ranking = _with_tail(Shortlist(head.rows[order], scores[order]), ranking)
        if steps in ("both", "diffusion"):
            ranking = self._diffusion_for(size).rerank(QueryInput(vector=vector), ranking, ctx)
        # Diffusion scores have no fixed scale: the top one becomes 1, like a near-duplicate's
        # cosine, so the blend's bonus for verified images weighs the same as without the graph.
        top = float(ranking.scores[0]) if len(ranking) else 0.0
        return Shortlist(ranking.rows, ranking.scores / top) if top > 0 else ranking

    def _neighbourhood(self, ctx: RerankContext) -> int:
        """Neighbours DBA and diffusion use: the measured neighbourhood (forced on: at least 3)."""
        profile = self.last_decision.get("profile")
        measured = int(profile["neighbourhood"]) if profile else self._profile(ctx).neighbourhood
        return max(3, measured)

    def _diffusion_for(self, knn: int) -> Diffusion:
        """Diffusion over the first ``k`` entries on the mutual ``knn``-NN graph, seeded by the
        query's first ``knn`` entries (the neighbours the graph vouches for)."""
        if self._diffusion is None or self._diffusion.config["knn"] != knn:
            # knn counts other views (the graph gate measured them); the reference counts the node itself
            self._diffusion = Diffusion(k=self.config["k"], knn=knn, knn_counts="others", query_knn=knn)
        return self._diffusion

    # --- expansion and ordering ------------------------------------------------------------------
    def _expansion_rows(self, inliers: dict[int, int]) -> list[int]:
        threshold = self.config["expand_inliers"] or self.config["min_inliers"]
        return [row for row, count in inliers.items() if count >= threshold]

    def _expanded(self, query: QueryInput, shortlist: Shortlist, inliers: dict[int, int],
                  ctx: RerankContext) -> Shortlist:
        """Verified rows (most inliers first) followed by the expanded query's ranking."""
        good = sorted((row for row, n in inliers.items() if n >= self.config["min_inliers"]),
                      key=lambda row: -inliers[row])
        expand = self._expansion_rows(inliers)
        vector = np.asarray(query.vector, dtype=np.float32)
        rest = shortlist
        if good and expand:  # an image that only reaches expand_inliers does not start an expansion
            neighbours = np.asarray(ctx.vectors[np.array(sorted(expand))], dtype=np.float64)
            vector = expanded_query(query.vector, neighbours, np.ones(len(neighbours)))
            rest = self._search(QueryInput(vector, query.image, query.sha256), max(len(shortlist), len(good)), ctx)
            self.last_expansion = sorted(expand)
        rest = self._graph_steps(vector, rest, ctx)
        if not good:
            return rest
        if self.config["order"] == "blend":
            return self._blend(rest, inliers)
        top = float(max(1.0, float(rest.scores.max()) if len(rest) else 1.0))
        head_scores = np.array([top + inliers[row] / 1000.0 for row in good], dtype=np.float32)
        taken = set(good)
        keep = np.array([int(r) not in taken for r in rest.rows], dtype=bool)
        return Shortlist(np.concatenate([np.array(good, dtype=np.int64), rest.rows[keep]]),
                         np.concatenate([head_scores, rest.scores[keep]]))

    def _blend(self, ranking: Shortlist, inliers: dict[int, int]) -> Shortlist:
        """Expanded-query cosine (or graph score) plus ``bonus`` × min(inliers, cap) / cap for verified images."""
        bonus = np.array([self.config["bonus"] * min(inliers.get(int(r), 0), self.config["cap"]) / self.config["cap"]
                          if inliers.get(int(r), 0) >= self.config["min_inliers"] else 0.0 for r in ranking.rows])
        scores = ranking.scores.astype(np.float64) + bonus
        order = np.argsort(-scores, kind="stable")
        return Shortlist(ranking.rows[order], scores[order].astype(np.float32))


def _with_tail(head: Shortlist, ranking: Shortlist) -> Shortlist:
    """``head`` (a re-sorted prefix of ``ranking``) followed by the rest of ``ranking``, shifted
    below the head so the scores stay non-increasing."""
    tail = Shortlist(ranking.rows[len(head):], ranking.scores[len(head):])
    if not len(tail) or not len(head):
        return head if len(head) else tail
    shift = max(0.0, float(tail.scores[0] - head.scores[-1]))
    return Shortlist(np.concatenate([head.rows, tail.rows]), np.concatenate([head.scores, tail.scores - shift]))
