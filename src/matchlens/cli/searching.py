"""``matchlens search``: one query, or many with one model load (``--queries``), through the search pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from matchlens.cli.common import (RERANK_HELP,
                                  RuntimeOpt, _fusion_option, _runtime, app, err, out, progress_factory)


@app.command()
def search(
    index_dir: Path = typer.Argument(..., help="Index folder."),
    query: Optional[str] = typer.Argument(None, help="Query image file (or give --queries)."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Many queries with one model load: a folder (recursive) or a list file of image paths; prints one JSON line per query."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="With --queries: JSON object mapping query files (path or file name) to [x0,y0,x1,y1]."),
    box: Optional[str] = typer.Option(None, help="Query box x0,y0,x1,y1 in pixels of the (upright) query image."),
    k: int = typer.Option(20, "-k", "--top", help="Number of results.", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {rank, score, id, path}."),
    jsonl: bool = typer.Option(False, "--jsonl", help="One JSON line per query: query, results (rank, score, id, path), timings_ms."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Assert the index uses this preset's pipeline."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help=RERANK_HELP),
    kind: Optional[str] = typer.Option(None, "--kind", help="Rank by one descriptor kind: cnn or a kind added by 'matchlens encode' (bow, vlad, densevlad, asmk)."),
    fuse: Optional[str] = typer.Option(None, "--fuse", help="Late fusion of descriptor kinds, e.g. cnn+asmk:ghm (see 'matchlens encode --help')."),
    explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Write an evidence PNG per result and index.html into this folder."),
    explain_model: Optional[Path] = typer.Option(None, "--explain-model", help="Verifier checkpoint for --explain (default: the indicative step's model; none: spatial-verification evidence)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar (batch search)."),
    runtime: Optional[str] = RuntimeOpt,
    regional: bool = typer.Option(False, "--regional", help="Rank by the regional kind (Σ λ_r cos over regions; --kind names it if not 'regional', --fuse may hold it) and show each result's region similarities and verdict (--explain: the regions drawn)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="With --regional: region weights λ (lambdas.json from 'matchlens fit-regions'; default uniform)."),
    category: Optional[str] = typer.Option(None, "--category", help="With --regional --weights: the category whose λ to use."),
    identify: Optional[str] = typer.Option(None, "--identify", help="Also say what the query shows: a recognizer (rec.pt from 'matchlens train-recognizer') or the retrieval-only vote knn:LABELS / knn=K:LABELS (labels CSV or class folders); printed above the results, 'identified' in --json / --jsonl."),
    enhance: str = typer.Option("none", "--enhance", help="Enhance the query first: none | auto (only when its predicted quality is low and the enhanced query is predicted better) | denoise | sr (models from 'matchlens train-quality --enhancers')."),
    quality_model: Optional[Path] = typer.Option(None, "--quality", help="Quality model (default: IDX/quality/model.pt if there is one): warns on stderr when the query's predicted AP is low."),
    relation: Optional[str] = typer.Option(None, "--relation", help="Rank by a relation 'SUBJECT PREDICATE OBJECT' (e.g. 'cube left of sphere'; several: ';') over the images' imported boxes (matchlens import-boxes, train-relations); no query image."),
    relation_model: Optional[Path] = typer.Option(None, "--relation-model", help="With --relation: the model (matchlens train-relations --out; default: the one stored with the index)."),
    relation_parts: str = typer.Option("s+o", "--relation-parts", help="With --relation: the triplet parts compared ({relation_parts})."),
    modify: Optional[str] = typer.Option(None, "--modify", help="A modification text for the query image, e.g. 'make it red' (TIRG): the query is the image's descriptor composed with the text by --composer."),
    composer: Optional[Path] = typer.Option(None, "--composer", help="With --modify: the composer model (matchlens train-composer --out) trained for this index."),
    text: Optional[str] = typer.Option(None, "--text", help="Rank by a sentence, e.g. 'a large red cube at top-left' (no query image): the joint embedding of --text-model; --rerank camp:k=100 or caan:k=100 re-scores its shortlist."),
    text_model: Optional[Path] = typer.Option(None, "--text-model", help="With --text: the text model (matchlens train-text --out) trained for this index's pipeline."),
) -> None:
    """Rank the indexed images against a query image, or against every image of --queries."""
    from matchlens.api import fused_searcher, open_index
    from matchlens.config import spec_from_preset
    from matchlens.errors import ConfigError
    from matchlens.io.images import parse_box
    from matchlens.pipeline.search import as_chain

    if text is not None or text_model is not None:  # a sentence query: the joint embedding (matchlens.cli.text_queries)
        from matchlens.cli.text_queries import text_search

        if text is None:
            raise ConfigError("--text-model goes with --text \"...\" (the sentence to search for)")
        return text_search(index_dir, query, queries, text, text_model, k, rerank, as_json, jsonl)
    if relation is not None:  # a relation query: ranked by scene graphs through the same pipeline
        from matchlens.cli.relations import relation_search

        return relation_search(index_dir, query, queries, relation, relation_model, relation_parts, k, rerank,
                               as_json, jsonl)
    if (query is None) == (queries is None):
        raise ConfigError("give one query image or --queries FOLDER_OR_LIST, not both" if query else
                          "give a query image or --queries FOLDER_OR_LIST")
    if queries is not None and (box or explain_dir is not None or as_json):
        raise ConfigError("--box, --explain and --json are for one query; with --queries use --boxes (output is JSON lines)")
    if boxes is not None and queries is None:
        raise ConfigError("--boxes goes with --queries; for one query use --box")
    if (weights is not None or category is not None) and not regional:
        raise ConfigError("--weights and --category go with --regional")
    if queries is not None and (enhance != "none" or quality_model is not None):
        raise ConfigError("--enhance and --quality are for one query, not --queries")
    if regional and queries is not None:
        raise ConfigError("--regional is for one query, not --queries")
    if identify is not None and (queries is not None or regional):
        raise ConfigError("--identify is for one query, without --queries or --regional")
    if (modify is not None or composer is not None) and (regional or kind or fuse):
        raise ConfigError("--modify ranks by the index's global descriptor: not with --regional, --kind or --fuse")
    idx = open_index(index_dir)
    idx.check_spec(spec_from_preset(preset) if preset else None)
    chain = as_chain(rerank)  # a bad chain fails before any model is loaded
    identifier = _identifier(identify, idx) if identify else None  # a wrong recognizer fails before searching
    if regional:  # the regional kind's ranking through the same pipeline, plus region similarities
        from matchlens.cli.regional import regional_search

        with _runtime(runtime):
            regional_search(idx, str(query), parse_box(box) if box else None, k, chain, rerank, kind, fuse, weights,
                            category, as_json, jsonl, explain_dir)
        return
    fusion = _fusion_option(kind, fuse)
    searcher = fused_searcher(idx, fusion) if fusion else idx.pipeline
    if modify is not None or composer is not None:  # the reference composed with the text (matchlens.cli.queries)
        from matchlens.cli.queries import modified_searcher

        searcher = modified_searcher(idx, modify, composer)
    with _runtime(runtime):
        if queries is not None:
            _batch_search(searcher, queries, boxes, k, chain, quiet)
            return
        assert query is not None  # exactly one of query and --queries was given (checked above)
        parsed = parse_box(box) if box else None
        answer = searcher.run(_quality_query(idx, Path(query).expanduser(), parsed, enhance, quality_model), k, chain)
    results = answer.results
    identified = identifier.identify(Path(query).expanduser(), parsed, results, str(query)) if identifier else None
    page = None
    if explain_dir is not None:  # evidence overlays and their page (matchlens.explain)
        page = _write_explanations(query, parsed, results, explain_dir, explain_model, rerank)
    if jsonl:
        sys.stdout.write(json.dumps(answer.to_dict() | ({"identified": identified.to_dict()} if identified else {})) + "\n")
    elif as_json and identified:  # an object only with --identify: the plain list stays as scripts read it
        sys.stdout.write(json.dumps({"identified": identified.to_dict(), "results": [r.to_dict() for r in results]},
                                    indent=1) + "\n")
    elif as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    else:
        if identified:
            from matchlens.cli.recognition import print_prediction

            print_prediction(identified)
        table = Table("rank", "score", "path", title=f"{Path(query).name} in {idx.root.name} ({idx.size} images)")
        for r in results:
            table.add_row(str(r.rank), f"{r.score:.4f}", Text(r.path))
        out.print(table)
    if page is not None:  # on stderr under --json, so stdout stays machine-readable
        (err if as_json or jsonl else out).print(f"evidence page: {page}", markup=False, highlight=False)


def _quality_query(idx, path: Path, box, enhance: str, model: Optional[Path]):
    """The query after the quality check and ``--enhance`` (matchlens.cli.quality)."""
    from matchlens.cli.quality import quality_query

    return quality_query(idx, path, box, enhance, model)


def _identifier(spec: str, idx):
    """--identify: a recognizer for the index's backbone, or the kNN vote (matchlens.recognize)."""
    from matchlens.recognize.identify import open_identifier

    return open_identifier(spec, idx.spec.backbone)


def _query(path: Path, box):
    from matchlens.pipeline import Query

    return Query(path, box, name=str(path))


def _batch_search(searcher, source: Path, boxes: Optional[Path], k: int, chain, quiet: bool) -> None:
    """One JSON line per query on stdout; a query that fails gets an ``error`` line and the run
    goes on (exit status 2 at the end when any failed)."""
    from matchlens.errors import MatchlensError, SourceError
    from matchlens.pipeline import read_queries

    items = read_queries(source, boxes)
    failed = 0
    with progress_factory(not quiet) as progress:
        advance = progress(len(items), "queries") if progress else None
        for item in items:
            try:
                line = searcher.run(item, k, chain).to_dict()
            except MatchlensError as exc:
                failed += 1
                line = {"query": item.name, "error": str(exc)}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            if advance:
                advance(1)
    if failed:
        raise SourceError(f"{failed} of {len(items)} queries failed (see their 'error' lines)")


def _write_explanations(query: str, box, results, folder: Path, model: Optional[Path], rerank: Optional[str]) -> Path:
    """Evidence PNGs and index.html for ``results``; returns the page."""
    from matchlens.explain.workflows import explain_search, model_from_chain

    with progress_factory(True) as progress:
        written = explain_search(query, [(r.path, r.score) for r in results], folder,
                                 model or model_from_chain(rerank), box, progress)
    err.print(f"evidence ({written.kind}): {len(written.rows)} PNG in {folder}", markup=False, highlight=False)
    return written.page


