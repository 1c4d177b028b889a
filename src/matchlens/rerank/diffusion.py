"""Diffusion re-ranking on a mutual kNN graph (Iscen et al., CVPR'17), truncated to the shortlist.

Offline, once per index generation, every database vector is linked to its nearest neighbours by
inner product; an edge survives only when it is mutual, with affinity ``a_ij = max(x_iᵀx_j, 0)^γ``.
As in the reference code (ahmetius/diffusion-retrieval, ``knngraph.m`` on ``knn_wrap`` lists),
a ``knn`` list counts the vector itself, so ``knn=50`` links each vector to its 49 nearest others;
``knn_counts="others"`` makes ``knn`` the number of others. The graph is cached as
``CACHE/diffusion/GEN-kK-gG.npz`` with K the number of others.

At query time the graph is *truncated* to the shortlist T, as the reference's large-scale mode
does (``trunclap.m``): the induced subgraph W_T is normalised with its own degrees,
``S = D^-1/2 W_T D^-1/2``, the query seeds ``y`` with its similarities^γ to its first
``query_knn`` shortlist entries (``ymake.m``), and ``(I - αS) f = y`` is solved by conjugate
gradient with the stopping rule and result of MATLAB's/Octave's ``pcg`` (``dfs.m``): at most
``iterations`` steps, stop at relative residual ``tol``, return the iterate of smallest residual.
The shortlist is re-sorted by ``f``. When the shortlist holds the whole collection this is the
reference's untruncated mode; the defaults are the reference's global-descriptor settings
(``run_test.m``: k=50, kq=10, γ=3, α=0.99, 20 iterations, tol 1e-6); see
docs/reference-exactness.md.

Memory is linear in the collection size N: the graph holds at most N·knn edges, the build keeps
the vectors once (in the FAISS index), N·knn neighbour triplets and O(N·knn) temporaries while
symmetrising, and searches the database in batches (FAISS tiles its own products), so no N×N
matrix ever exists. A query costs O(k·knn·log k) plus the CG iterations on a k-node graph,
independent of N.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from matchlens.components import in_range, one_of, positive_float, positive_int
from matchlens.fileio import atomic_write
from matchlens.rerank.base import RERANKERS, QueryInput, Reranker, RerankContext, Shortlist

if TYPE_CHECKING:
    import scipy.sparse as sp

__all__ = ["KNN_COUNTS", "Diffusion", "build_knn_graph", "conjugate_gradient", "diffuse", "graph_for",
           "induced_subgraph", "load_graph", "save_graph"]

# What a ``knn`` list counts: "self" the vector itself and knn - 1 others (the reference code),
# "others" knn other vectors.
KNN_COUNTS = ("self", "others")


# --- offline graph ------------------------------------------------------------------------------

def build_knn_graph(vectors: np.ndarray, k: int = 50, gamma: float = 3.0, batch: int = 4096,
                    search=None) -> sp.csr_matrix:
    """The symmetric mutual kNN affinity graph of ``vectors`` (N, d) as an (N, N) float32 CSR matrix.

    Neighbours are found by exact inner product (FAISS ``IndexFlatIP``) in batches of ``batch``
    queries; the diagonal is empty; ``W[i, j] = max(x_iᵀx_j, 0)^gamma`` when i and j are in each
    other's ``k`` nearest neighbours, else no entry. ``k`` is capped at N - 1. Memory O(N·(k + d)).
    ``search``: an index's own ``(queries, k) -> (scores, rows)`` (an approximate backend at
    scale, where exact kNN of every vector would cost O(N²·d)); rows -1 (not found) are dropped.
    """
    import scipy.sparse as sp  # deferred: scipy.sparse costs 0.15 s to import and only diffusion needs it
    x = vectors if search is not None else np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    kk = min(int(k), n - 1)
    if kk < 1:
        return sp.csr_matrix((n, n), dtype=np.float32)
    if search is None:
        import faiss  # deferred: only graph builds need it

        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        search = index.search
    heads = np.empty(n * kk, dtype=np.int64)
    tails = np.empty(n * kk, dtype=np.int64)
    weights = np.empty(n * kk, dtype=np.float32)
    for start in range(0, n, batch):
        queries = np.ascontiguousarray(x[start:start + batch], dtype=np.float32)
        sims, ids = search(queries, kk + 1)  # +1: the vector itself
        keep = _without_self(ids, start)
        span = slice(start * kk, (start + len(ids)) * kk)
        heads[span] = np.repeat(np.arange(start, start + len(ids)), kk)
        tails[span] = ids[keep]
        weights[span] = np.where(ids[keep] >= 0, _affinity(sims[keep], gamma), 0)
    found = tails >= 0
    directed = sp.csr_matrix((weights[found], (heads[found], tails[found])), shape=(n, n))
    del heads, tails, weights
    # Weights are non-negative and missing entries are 0, so the elementwise minimum keeps exactly
    # the mutual edges; it also makes W exactly symmetric although a_ij and a_ji were computed in
    # different batches (and may differ in the last bit).
    graph = sp.csr_matrix(directed.minimum(directed.T), dtype=np.float32)
    graph.eliminate_zeros()
    graph.sort_indices()
    return graph


def _without_self(ids: np.ndarray, start: int) -> np.ndarray:
    """Mask of the k neighbours to keep among k + 1 found: drop the query itself, else the last one.

    The query is not always first (duplicates tie with it), so it is found by id.
    """
    own = np.arange(start, start + len(ids))[:, None]
    drop = ids == own
    drop[~drop.any(axis=1), -1] = True
    return ~drop


def _affinity(sims: np.ndarray, gamma: float) -> np.ndarray:
    """``max(sim, 0)^gamma`` computed in float64, returned as float32."""
    return (np.maximum(sims.astype(np.float64), 0.0) ** gamma).astype(np.float32)


def save_graph(path: str | os.PathLike, graph: sp.spmatrix) -> None:
    """Write ``graph`` to ``path`` (npz) atomically: readers see the old file or the whole new one."""
    import scipy.sparse as sp  # deferred: scipy.sparse costs 0.15 s to import and only diffusion needs it
    with atomic_write(path, "wb") as handle:  # a handle, so scipy does not append ".npz" to the name
        # Uncompressed: graphs are loaded once per process and zlib barely shrinks float data.
        sp.save_npz(handle, sp.csr_matrix(graph), compressed=False)


def load_graph(path: str | os.PathLike) -> sp.csr_matrix:
    """Read a graph written by :func:`save_graph`."""
    import scipy.sparse as sp  # deferred: scipy.sparse costs 0.15 s to import and only diffusion needs it
    return sp.csr_matrix(sp.load_npz(Path(path)))


def graph_for(ctx: RerankContext, k: int, gamma: float) -> sp.csr_matrix:
    """The diffusion graph of ``ctx``'s generation, from ``ctx.cache_dir("diffusion")`` or built and cached.

    The file is ``{generation}-k{k}-g{gamma}.npz``. A missing, unreadable or mis-sized file is
    rebuilt. When ``cache_dir`` returns None (e.g. a read-only index) nothing is written and every
    call builds the graph in memory again, so callers should keep the result (as :class:`Diffusion` does).
    """
    vectors = ctx.vectors
    folder = ctx.cache_dir("diffusion")
    # An approximate index (IVF-PQ, HNSW, Milvus) finds the neighbours itself: exact kNN of every
    # vector is O(N²·d), hours at a million images.
    search = ctx.search if getattr(ctx, "approximate", False) else None
    if folder is None:
        return build_knn_graph(vectors, k, gamma, search=search)
    path = Path(folder) / f"{ctx.generation}-k{k}-g{float(gamma)}.npz"
    n = len(vectors)
    if path.exists():
        try:
            graph = load_graph(path)
            if graph.shape == (n, n):
                return graph
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache is only a cache: rebuild it below
    graph = build_knn_graph(vectors, k, gamma, search=search)
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        save_graph(path, graph)
    except OSError:
        pass  # caching is an optimisation; the graph in hand is still right
    return graph


# --- query time ---------------------------------------------------------------------------------

def induced_subgraph(graph: sp.csr_matrix, nodes: np.ndarray) -> sp.csr_matrix:
    """``graph[nodes][:, nodes]`` (rows and columns in the order of ``nodes``, assumed distinct).

    Computed from the selected rows' edges only: scipy's column fancy-indexing allocates an array
    as long as the collection, which would make each query cost O(N).
    """
    import scipy.sparse as sp  # deferred: scipy.sparse costs 0.15 s to import and only diffusion needs it
    nodes = np.asarray(nodes, dtype=np.int64)
    m = len(nodes)
    rows = graph[nodes]
    order = np.argsort(nodes, kind="stable")
    sorted_nodes = nodes[order]
    pos = np.minimum(np.searchsorted(sorted_nodes, rows.indices), m - 1)
    hit = sorted_nodes[pos] == rows.indices
    owner = np.repeat(np.arange(m), np.diff(rows.indptr))
    return sp.csr_matrix((rows.data[hit], (owner[hit], order[pos[hit]])), shape=(m, m))


def diffuse(graph: sp.csr_matrix, y: np.ndarray, alpha: float, iterations: int, tol: float) -> np.ndarray:
    """Solve ``(I - alpha·S) f = y`` by conjugate gradient, ``S = D^-1/2 W D^-1/2`` with W's own degrees.

    Isolated nodes (degree 0) get no normalisation (their row of S is empty), so their ``f`` is ``y``.
    """
    import scipy.sparse as sp  # deferred: scipy.sparse costs 0.15 s to import and only diffusion needs it
    w = sp.csr_matrix(graph, dtype=np.float64)
    degrees = np.asarray(w.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degrees)
    np.divide(1.0, np.sqrt(degrees), out=inv_sqrt, where=degrees > 0)
    d = sp.diags(inv_sqrt)
    system = sp.identity(w.shape[0], format="csr") - alpha * (d @ w @ d)
    # Not converged within ``iterations`` is the intended truncation, not an error.
    return conjugate_gradient(system, np.asarray(y, dtype=np.float64), tol, iterations)


def conjugate_gradient(a: Any, b: np.ndarray, tol: float, maxiter: int) -> np.ndarray:
    """``a x = b`` (a symmetric positive definite) by CG from x = 0, as MATLAB's/Octave's ``pcg``.

    At most ``maxiter`` steps; stops once the (recursively updated) residual is at most
    ``tol·‖b‖``, or when x stagnates; returns the iterate of smallest residual norm (the last
    of equal ones), which is what the reference's ``dfs.m`` gets from ``pcg``. scipy's ``cg``
    returns the last iterate instead: CG's residual is not monotone, so they can differ.
    """
    x = np.zeros_like(b)
    b_norm = float(np.linalg.norm(b))
    best, best_residual, residual = x, b_norm, b_norm
    r, p, old_tau = b.copy(), np.zeros_like(b), 1.0
    for _ in range(maxiter):
        if residual <= tol * b_norm:
            break
        tau = float(r @ r)
        p = r + (tau / old_tau) * p
        old_tau = tau
        w = a @ p
        den = float(p @ w)
        if tau <= 0.0 or den <= 0.0:  # not positive definite (pcg's flag 4): keep the best so far
            break
        previous = x
        x = x + (tau / den) * p
        r = r - (tau / den) * w
        residual = float(np.linalg.norm(r))
        if residual <= best_residual:
            best, best_residual = x, residual
        if np.linalg.norm(x - previous) <= np.finfo(float).eps * np.linalg.norm(x):  # stagnated
            break
    return best


@RERANKERS.register("diffusion")
class Diffusion(Reranker):
    """Truncated diffusion: re-sort the first ``k`` shortlist entries by diffusion on their kNN subgraph.

    Parameters: ``k`` (entries diffused = the truncation), ``knn`` (graph neighbour lists, the
    vector itself included unless ``knn_counts`` is ``"others"``: the reference's ``k``), ``gamma``
    (affinity exponent), ``alpha`` (in (0, 1)), ``query_knn`` (first shortlist entries that seed
    the query), ``iterations`` (CG maximum), ``tol`` (CG relative tolerance). Entries beyond ``k``
    follow in their input order, their scores shifted down by one constant so that the list stays
    non-increasing.
    """

    defaults: ClassVar[dict[str, Any]] = {"k": 1000, "knn": 50, "knn_counts": "self", "gamma": 3.0, "alpha": 0.99,
                                          "query_knn": 10, "iterations": 20, "tol": 1e-6}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # Per-process memo of the graph: loading it from disk per query would dominate query time.
        self._graph: tuple[tuple[str, int], sp.csr_matrix] | None = None

    def validate(self) -> None:
        """Integers >= 1; gamma and tol finite and > 0; alpha strictly between 0 and 1."""
        for key in ("k", "knn", "query_knn", "iterations"):
            self.check(key, positive_int)
        self.check("knn_counts", one_of, KNN_COUNTS)
        gamma, tol = self.check("gamma", positive_float), self.check("tol", positive_float)
        alpha = self.check("alpha", in_range, 0.0, 1.0, low_open=True, high_open=True)
        # Floats, so that gamma=3 and gamma=3.0 share one cached graph.
        self.config.update(gamma=gamma, alpha=alpha, tol=tol)

    def rerank(self, query: QueryInput, shortlist: Shortlist, ctx: RerankContext) -> Shortlist:
        """The first ``k`` entries re-sorted by diffusion score, then the rest unchanged in order."""
        c = self.config
        nodes = shortlist.rows[:c["k"]]
        if len(nodes) == 0:
            return shortlist
        y = self._seed(query, nodes, ctx)
        f = diffuse(induced_subgraph(self._graph_of(ctx), nodes), y, c["alpha"], c["iterations"], c["tol"])
        order = np.argsort(-f, kind="stable")
        head_scores = f[order].astype(np.float32)
        tail_rows, tail_scores = shortlist.rows[len(nodes):], shortlist.scores[len(nodes):]
        if len(tail_scores):
            # Shift (not clamp) the tail below the head: the list stays non-increasing and the
            # tail keeps its score gaps, as the k-reciprocal reranker does.
            tail_scores = tail_scores - max(0.0, float(tail_scores[0] - head_scores[-1]))
        return Shortlist(np.concatenate([nodes[order], tail_rows]), np.concatenate([head_scores, tail_scores]))

    def _seed(self, query: QueryInput, nodes: np.ndarray, ctx: RerankContext) -> np.ndarray:
        """y: ``max(qᵀx, 0)^gamma`` on the first ``query_knn`` nodes, 0 elsewhere.

        Similarities are recomputed rather than read from the shortlist scores, which an earlier
        reranker (spatial verification, expansion) may have replaced with something else.
        """
        seeds = nodes[:self.config["query_knn"]]
        sims = np.asarray(ctx.vectors[seeds], dtype=np.float64) @ np.asarray(query.vector, dtype=np.float64)
        y = np.zeros(len(nodes))
        y[:len(seeds)] = np.maximum(sims, 0.0) ** self.config["gamma"]
        return y

    def _graph_of(self, ctx: RerankContext) -> sp.csr_matrix:
        """The graph of ``ctx``'s generation, memoised on this reranker."""
        key = (ctx.generation, len(ctx.vectors))
        if self._graph is None or self._graph[0] != key:
            self._graph = (key, graph_for(ctx, self.neighbours, self.config["gamma"]))
        return self._graph[1]

    @property
    def neighbours(self) -> int:
        """Graph neighbours per vector other than itself (what :func:`build_knn_graph` calls ``k``)."""
        return self.config["knn"] - 1 if self.config["knn_counts"] == "self" else self.config["knn"]

