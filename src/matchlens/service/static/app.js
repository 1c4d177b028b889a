// matchlens search page: plain JavaScript, no framework, nothing loaded from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_CANVAS = { width: 560, height: 420 };

const state = {
  file: null,      // the query File, sent as is to /search and /explain
  bitmap: null,    // decoded query (EXIF orientation applied, as the server's loader does)
  scale: 1,        // canvas pixels per image pixel
  box: null,       // [x0, y0, x1, y1] in image pixels, or null for the whole image
  drag: null,      // box corner where the pointer went down, while drawing
  selected: null,  // the result card shown in the evidence panel
  regions: null,   // the last regional search's query regions: {boxes, labels, frame}, drawn on the query
};

// ---- the query image --------------------------------------------------------------------
async function useFile(file) {
  if (!file) return;
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (err) {
    showStatus(`this browser cannot show ${file.name || "the file"}; it is still sent to the server`, false);
    bitmap = null;
  }
  state.file = file;
  state.bitmap = bitmap;
  state.box = null;
  state.regions = null;
  $("box").value = "";
  $("search").disabled = false;
  $("localize").disabled = false;
  $("canvas-wrap").hidden = bitmap === null;
  if (bitmap) {
    const canvas = $("canvas");
    state.scale = Math.min(1, MAX_CANVAS.width / bitmap.width, MAX_CANVAS.height / bitmap.height);
    canvas.width = Math.round(bitmap.width * state.scale);
    canvas.height = Math.round(bitmap.height * state.scale);
    draw();
    showStatus(`query: ${file.name || "pasted image"} (${bitmap.width}×${bitmap.height})`);
  }
}

function draw() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  ctx.drawImage(state.bitmap, 0, 0, canvas.width, canvas.height);
  drawQueryRegions(ctx);
  if (!state.box) return;
  const [x0, y0, x1, y1] = state.box.map((v) => v * state.scale);
  ctx.save();
  ctx.fillStyle = "rgba(0, 0, 0, 0.45)"; // dim what the box leaves out
  ctx.beginPath();
  ctx.rect(0, 0, canvas.width, canvas.height);
  ctx.rect(x0, y0, x1 - x0, y1 - y0);
  ctx.fill("evenodd");
  ctx.strokeStyle = "#ffd600";
  ctx.lineWidth = 2;
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  ctx.restore();
}

function imagePoint(event) {
  // Pointer position in image pixels, clamped to the image.
  const canvas = $("canvas");
  const rect = canvas.getBoundingClientRect();
  const cx = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const cy = ((event.clientY - rect.top) * canvas.height) / rect.height;
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  return [clamp(cx / state.scale, state.bitmap.width), clamp(cy / state.scale, state.bitmap.height)];
}

function setBox(a, b) {
  const box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(Math.round);
  const big = box[2] - box[0] >= 4 && box[3] - box[1] >= 4; // a click is not a box
  state.box = big ? box : null;
  state.regions = null; // they were relative to the old box
  $("box").value = big ? box.join(",") : "";
  draw();
}

function bindCanvas() {
  const canvas = $("canvas");
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.bitmap) return;
    canvas.setPointerCapture(e.pointerId);
    state.drag = imagePoint(e);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (state.drag) setBox(state.drag, imagePoint(e));
  });
  const finish = (e) => {
    if (!state.drag) return;
    setBox(state.drag, imagePoint(e));
    state.drag = null;
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
}

function bindInputs() {
  $("file").addEventListener("change", (e) => useFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    useFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) useFile(item.getAsFile());
  });
  $("clear-box").addEventListener("click", () => { state.box = null; $("box").value = ""; if (state.bitmap) draw(); });
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("localize-form").addEventListener("submit", (e) => { e.preventDefault(); localize(); });
  $("text-form").addEventListener("submit", (e) => { e.preventDefault(); searchText(); });
  $("relation-form").addEventListener("submit", (e) => { e.preventDefault(); searchRelation(); });
}

// ---- talking to the API -------------------------------------------------------------------
function queryForm() {
  const form = new FormData();
  form.append("image", state.file, state.file.name || "query");
  if (state.box) form.append("box", state.box.join(","));
  return form;
}

async function errorText(response) {
  try {
    const body = await response.json();
    const detail = body.detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return String(detail);
  } catch (err) {
    return `${response.status} ${response.statusText}`;
  }
}

async function search() {
  if (!state.file) return;
  const form = queryForm();
  form.append("k", $("k").value || "12");
  const rerank = $("auto-rerank").checked ? "auto" : $("rerank").value.trim();
  if (rerank) form.append("rerank", rerank);
  if ($("regional").checked) form.append("regional", "true");
  const modify = $("modify-label").hidden ? "" : $("modify").value;
  if (modify.trim()) form.append("modify", modify);
  $("search").disabled = true;
  showStatus("searching…");
  try {
    const response = await fetch("/search", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    state.textQuery = false;
    showResults(body, rerank);
  } catch (err) {
    showStatus(err.message, true);
  } finally {
    $("search").disabled = false;
  }
}

async function searchText() {
  // A sentence query (POST /search/text): no photo; the results cannot be explained against one.
  const form = new FormData();
  form.append("text", $("text-query").value);
  form.append("k", $("k").value || "12");
  const rerank = $("rerank").value.trim();
  if (rerank) form.append("rerank", rerank);
  $("text-search").disabled = true;
  showStatus("searching by text…");
  try {
    const response = await fetch("/search/text", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    state.textQuery = true;
    showResults(body, rerank);
    showStatus(`${body.results.length} results from ${body.index_size} images for "${body.text}"` +
               (rerank ? `, re-ranked by ${rerank}` : ""));
  } catch (err) {
    showStatus(err.message, true);
  } finally {
    $("text-search").disabled = false;
  }
}

async function searchRelation() {
  // A relation query (POST /search/relation): ranked by the images' scene graphs, no photo.
  const form = new FormData();
  form.append("relation", $("relation-query").value);
  form.append("k", $("k").value || "12");
  form.append("parts", $("relation-parts").value || "s+o");
  $("relation-search").disabled = true;
  showStatus("searching by relation…");
  try {
    const response = await fetch("/search/relation", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const body = await response.json();
    state.textQuery = true; // no photo to explain the results against
    showResults(body, "");
    showStatus(`${body.results.length} results from ${body.index_size} images for "${body.relation}" (${body.parts})` +
               (body.notes.length ? ` · ${body.notes.join(" · ")}` : ""));
  } catch (err) {
    showStatus(err.message, true);
  } finally {
    $("relation-search").disabled = false;
  }
}

function showRelationVocabulary(relations) {
  $("relation-form").hidden = !relations;
  if (!relations) return;
  const [a, b] = [relations.categories[0], relations.categories[1] || relations.categories[0]];
  const options = relations.predicates.map((p) => new Option("", `${a} ${p} ${b}`));
  $("relation-options").replaceChildren(...options);
  $("relation-parts").replaceChildren(...relations.parts.map((p) => new Option(p, p, p === "s+o", p === "s+o")));
  $("relation-vocabulary").textContent = `objects: ${relations.categories.join(", ")}`;
}

function showResults(body, rerank) {
  const list = $("results");
  list.replaceChildren();
  $("evidence-panel").hidden = true;
  for (const r of body.results) {
    const card = document.createElement("li");
    card.className = "card";
    card.tabIndex = 0;
    card.dataset.id = r.id;
    card.dataset.name = r.name;
    const img = document.createElement("img");
    img.src = r.thumbnail_url;
    img.alt = r.name;
    img.loading = "lazy";
    if (r.regions) img.addEventListener("load", () => img.replaceWith(regionCanvas(img, r, body.regional)));
    const meta = document.createElement("div");
    meta.className = "meta";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = `${r.rank}. ${r.name}`;
    name.title = r.path;
    const score = document.createElement("div");
    score.className = "score muted";
    score.textContent = `score ${r.score.toFixed(4)}`;
    meta.append(name, score);
    if (r.regions) meta.append(...regionLines(r, body.regional));
    card.append(img, meta);
    card.addEventListener("click", () => explain(card, r));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") explain(card, r); });
    list.append(card);
  }
  const warning = body.quality && body.quality.warning; // the index's quality model says this query is weak
  $("quality-warning").textContent = warning ? `⚠ ${warning}` : "";
  $("quality-warning").hidden = !warning;
  showIdentified(body.identified); // serve --identify: the predicted class above the results
  const t = body.timings_ms;
  showStatus(`${body.results.length} results from ${body.index_size} images` +
             (body.box ? ` (box ${body.box.map(Math.round).join(",")})` : "") + (rerank ? `, re-ranked by ${rerank}` : "") +
             (body.regional ? `, by regions (${body.regional.layout})` : "") +
             (body.modify ? `, modified by "${body.modify}"` : ""));
  const ms = (key) => (t[key] ?? 0).toFixed(1); // a regional search describes the query inside its search step
  $("timings").textContent = `decode ${ms("decode")} ms · extract ${ms("extract")} ms · ` +
    `search ${ms("search")} ms · rerank ${ms("rerank")} ms · total ${ms("total")} ms`;
  state.regions = body.regional ? { boxes: body.regional.query_boxes, labels: body.regional.labels, frame: body.box } : null;
  if (state.bitmap) draw();
}

// ---- serve --identify: "retrieve, then identify" -------------------------------------------------
function showIdentified(id) {
  const line = $("identified");
  line.hidden = !id;
  if (!id) return;
  const others = (id.top || []).slice(1).map((c) => `${c.label} ${c.confidence.toFixed(2)}`).join(", ");
  line.textContent = id.label
    ? `Identified: ${id.label} (confidence ${id.confidence.toFixed(2)}, ${id.source})` +
      (id.uncertain ? " - uncertain, may be a class it does not know" : "") + (others ? `; then ${others}` : "")
    : "Identified: nothing (no labelled image among the results)";
  line.classList.toggle("uncertain", !!id.uncertain);
}

// ---- regional search: region boxes coloured by similarity ------------------------------------
function regionColour(similarity, threshold) {
  // As the CLI's PNGs: red where the region differs, yellow (just above the threshold) to green (identical).
  if (similarity < threshold) return "rgb(230, 30, 30)";
  const t = Math.min(1, Math.max(0, (similarity - threshold) / Math.max(1 - threshold, 1e-6)));
  return `rgb(${Math.round(220 * (1 - t))}, 190, 30)`;
}

function regionCanvas(img, result, regional) {
  // The thumbnail with the result's regions outlined (relative boxes), coloured by similarity.
  const canvas = document.createElement("canvas");
  canvas.className = "regions";
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  ctx.lineWidth = Math.max(2, canvas.width / 80);
  regional.regions.forEach((name, i) => {
    const [x0, y0, x1, y1] = result.region_boxes[i];
    ctx.strokeStyle = regionColour(result.regions[name], regional.differs_below);
    ctx.strokeRect(x0 * canvas.width, y0 * canvas.height, (x1 - x0) * canvas.width, (y1 - y0) * canvas.height);
  });
  canvas.title = result.verdict;
  return canvas;
}

function regionLines(result, regional) {
  const verdict = document.createElement("div");
  verdict.className = "verdict";
  verdict.textContent = result.verdict;
  const values = document.createElement("div");
  values.className = "verdict muted";
  regional.regions.forEach((name, i) => {
    const item = document.createElement("span");
    const value = result.regions[name];
    item.textContent = `${regional.labels[i]} ${value.toFixed(2)}` + (i < regional.regions.length - 1 ? " · " : "");
    if (value < regional.differs_below) item.className = "differs";
    values.append(item);
  });
  return [verdict, values];
}

function drawQueryRegions(ctx) {
  // The query's regions, relative to the box it was searched with (or the whole image).
  if (!state.regions) return;
  const scale = state.scale;
  const [fx0, fy0, fx1, fy1] = state.regions.frame || [0, 0, state.bitmap.width, state.bitmap.height];
  ctx.save();
  ctx.strokeStyle = "#0b6bcb";
  ctx.lineWidth = 1.5;
  ctx.setLineDash([5, 3]);
  for (const [x0, y0, x1, y1] of state.regions.boxes) {
    const left = (fx0 + x0 * (fx1 - fx0)) * scale;
    const top = (fy0 + y0 * (fy1 - fy0)) * scale;
    ctx.strokeRect(left, top, (x1 - x0) * (fx1 - fx0) * scale, (y1 - y0) * (fy1 - fy0) * scale);
  }
  ctx.restore();
}

async function explain(card, result) {
  if (state.selected) state.selected.classList.remove("selected");
  state.selected = card;
  card.classList.add("selected");
  if (state.textQuery || !state.file) return; // a text query has no photo to compare with
  const form = queryForm();
  form.append("id", String(result.id));
  const panel = $("evidence-panel");
  const img = $("evidence");
  panel.hidden = false;
  $("evidence-caption").textContent = `computing for ${result.name}…`;
  $("evidence-full").href = result.image_url;
  try {
    const response = await fetch("/explain", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    // Spatial evidence counts matching points; the verifier (serve --verifier) gives a probability.
    const inliers = response.headers.get("X-Matchlens-Inliers");
    const score = response.headers.get("X-Matchlens-Score");
    const blob = await response.blob();
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.dataset.evidence = response.headers.get("X-Matchlens-Evidence") || "spatial";
    img.dataset.score = score || "";
    if (inliers !== null) img.dataset.inliers = inliers; else delete img.dataset.inliers;
    img.src = URL.createObjectURL(blob);
    const what = inliers !== null ? `${inliers} matching points` : `verifier score ${Number(score).toFixed(3)}`;
    $("evidence-caption").textContent = `#${result.rank} ${result.name}: ${what}`;
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (err) {
    $("evidence-caption").textContent = err.message;
  }
}

// ---- localisation (servers started with --map) ----------------------------------------------
async function localize() {
  if (!state.file) return;
  const form = new FormData();
  form.append("image", state.file, state.file.name || "query");
  const intrinsics = $("intrinsics").value.trim();
  if (intrinsics) form.append("intrinsics", intrinsics);
  $("localize").disabled = true;
  $("localize-panel").hidden = false;
  $("localize-caption").textContent = "localising…";
  try {
    const response = await fetch("/localize", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    showPose(await response.json());
  } catch (err) {
    $("localize-caption").textContent = "";
    showSummary(err.message, true);
  } finally {
    $("localize").disabled = false;
  }
}

function showSummary(text, failed) {
  const summary = $("localize-summary");
  summary.textContent = text;
  summary.classList.toggle("failed", failed);
}

function showPose(body) {
  // A query that cannot be localised is an answer (status "failed" and why), not an error.
  const ok = body.status === "ok";
  const fixed = (values, digits) => values.map((v) => v.toFixed(digits)).join(", ");
  $("localize-caption").textContent = `${body.query} in map ${body.map} (top-${body.k}, ${body.preset})`;
  const counts = `${body.inliers}/${body.correspondences} inliers · ${body.timings_ms.total.toFixed(0)} ms`;
  showSummary(ok ? `ok · camera centre C = (${fixed(body.C, 3)}) · ${counts}`
                 : `failed: ${body.reason} · ${counts}`, !ok);
  const list = $("localize-retrieved");
  list.replaceChildren();
  for (const r of body.retrieved_images) {
    const card = document.createElement("li");
    card.className = "card";
    if (r.thumbnail_url) {
      const img = document.createElement("img");
      img.src = r.thumbnail_url;
      img.alt = r.name;
      img.loading = "lazy";
      card.append(img);
    }
    const meta = document.createElement("div");
    meta.className = "meta name";
    meta.textContent = r.name;
    card.append(meta);
    list.append(card);
  }
  const plot = $("localize-plot");
  plot.hidden = !body.plot;
  if (body.plot) plot.src = body.plot; else plot.removeAttribute("src");
  $("localize-panel").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function showStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function showIndexInfo() {
  try {
    const response = await fetch("/index");
    if (!response.ok) throw new Error(await errorText(response));
    const info = await response.json();
    $("index-info").textContent = `${info.images} images · ${info.pipeline}` +
      (info.map ? ` · map ${info.map.name} (${info.map.images} images)` : "");
    $("regional-label").hidden = !(info.regional_kinds && info.regional_kinds.length);
    $("modify-label").hidden = !info.composer;
    $("text-form").hidden = !info.text_model;
    showRelationVocabulary(info.relations);
    if (info.map) {
      $("map-name").textContent = info.map.name;
      $("localize-form").hidden = false;
    }
  } catch (err) {
    $("index-info").textContent = `index unavailable: ${err.message}`;
  }
}

bindInputs();
bindCanvas();
showIndexInfo();
