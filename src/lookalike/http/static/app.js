// The explorer page: plain JavaScript over the service's /v1 routes, nothing fetched from elsewhere.
// The token lives in this tab (a variable, or sessionStorage when asked) and only ever travels in
// the Authorization header. Every error the service answers is shown on the page.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
  "#ff9da7", "#9c755f", "#6b9ac4", "#d37295", "#8cd17d"];
const OTHER = "#c9ccd1";
const TITLE_FIELDS = ["title", "headline", "name", "package", "label"];
const TEXT_FIELDS = ["synopsis", "summary", "lead", "description", "text", "body", "content"];
const COLOUR_FIELDS = ["topic", "cluster", "category", "section", "language", "genre", "source"];
const NUMERIC = ["int8", "int16", "int32", "int64", "float", "double"];
const CLUSTER_KS = [6, 12];
const MAP_SIZE = 600;
const MAP_PAD = 24;

const state = {
  codops: "", token: "", collection: null, description: null, mode: "text",
  map: null, scale: null, last: null, shown: 0,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

// -- talking to the service ------------------------------------------------------------------

class ServiceError extends Error {
  constructor(status, kind, detail) {
    super(detail);
    this.status = status;
    this.kind = kind;
  }
}

const STATUS_TITLES = {
  400: "The request was refused", 401: "Not signed in", 403: "No access",
  404: "Not found", 409: "Conflict", 413: "Too large", 422: "Malformed request",
  503: "The engine is unavailable",
};

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(`/v1/${encodeURIComponent(state.codops)}${path}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store", credentials: "omit",
    });
  } catch (exc) {
    throw new ServiceError(0, "network", `the service could not be reached (${exc.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const detail = (data && (data.detail || data.error)) || text || response.statusText;
    throw new ServiceError(response.status, data && data.error, typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return data;
}

const collectionPath = (suffix = "") => `/collections/${encodeURIComponent(state.collection)}${suffix}`;

function showError(error) {
  const status = error.status || 0;
  const title = status >= 500 && !STATUS_TITLES[status] ? "The service failed"
    : STATUS_TITLES[status] || (status ? `Error ${status}` : "Cannot reach the service");
  $("error-title").textContent = status ? `${status} · ${title}:` : `${title}:`;
  $("error-detail").textContent = error.message;
  $("error").hidden = false;
  setStatus("");
}

function clearError() {
  $("error").hidden = true;
}

function setStatus(text) {
  $("status").textContent = text;
}

// Run an action; any error is the person's to see.
async function guarded(action) {
  try {
    clearError();
    return await action();
  } catch (error) {
    showError(error);
    return undefined;
  }
}

// -- signing in and choosing a collection ----------------------------------------------------

async function connect(event) {
  event.preventDefault();
  state.codops = $("codops").value.trim();
  state.token = $("token").value;
  localStorage.setItem("lookalike.codops", state.codops);
  if ($("remember").checked) sessionStorage.setItem("lookalike.token", state.token);
  else sessionStorage.removeItem("lookalike.token");
  await guarded(async () => {
    const names = await api("GET", "/collections");
    const select = $("collection");
    select.replaceChildren(el("option", { value: "" }, names.length ? "choose a collection" : "no collections yet"));
    for (const name of names) select.append(el("option", { value: name }, name));
    select.disabled = names.length === 0;
    $("who-org").textContent = `organisation ${state.codops}`;
    $("who").hidden = false;
    $("signin").hidden = true;
    setStatus(`${names.length} collection${names.length === 1 ? "" : "s"}`);
    if (names.length === 1) {
      select.value = names[0];
      await chooseCollection();
    }
  });
}

function signOut() {
  state.token = "";
  sessionStorage.removeItem("lookalike.token");
  $("token").value = "";
  $("signin").hidden = false;
  $("who").hidden = true;
  resetCollection();
  $("collection").replaceChildren(el("option", { value: "" }, "connect first"));
  $("collection").disabled = true;
}

function resetCollection() {
  state.collection = null;
  state.description = null;
  state.map = null;
  state.last = null;
  $("hits").replaceChildren();
  $("query-card").replaceChildren();
  $("map").replaceChildren();
  $("legend").replaceChildren();
  $("collection-info").textContent = "";
  $("map-caption").textContent = "Pick a collection to draw a map of it.";
  $("query").disabled = true;
  $("search").disabled = true;
  $("welcome").hidden = false;
}

async function chooseCollection() {
  const name = $("collection").value;
  resetCollection();
  if (!name) return;
  state.collection = name;
  await guarded(async () => {
    const description = await api("GET", collectionPath());
    state.description = description;
    describeCollection(description);
    await drawMap();
  });
}

function fieldsOf(description, types) {
  return description.fields.filter((f) => !types || types.includes(f.type)).map((f) => f.name);
}

function describeCollection(d) {
  const embedder = d.embedder ? `, embedder ${d.embedder.name}` : ", no embedder (query by id)";
  $("collection-info").textContent = `${d.count.toLocaleString()} documents, dim ${d.dim}, ${d.metric}${embedder}`;
  const scalar = d.fields.filter((f) => f.type !== "json" && !f.enable_analyzer);
  fillSelect($("group-by"), "off", scalar.map((f) => f.name));
  const numeric = fieldsOf(d, NUMERIC);
  fillSelect($("recency-field"), "off", numeric);
  $("recency-row").hidden = numeric.length === 0;
  const colourable = scalar.map((f) => f.name);
  fillSelect($("color-field"), "none", colourable);
  if (d.count >= 2) {
    // Clusters found by the service (k-means over the whole collection), as another colouring.
    const ks = CLUSTER_KS.filter((k) => k <= d.count);
    $("color-field").append(el("optgroup", { label: "clusters (k-means)" },
      ...ks.map((k) => el("option", { value: `cluster:${k}` }, `${k} clusters`))));
  }
  $("color-field").value = COLOUR_FIELDS.find((f) => colourable.includes(f)) || colourable[0] || "";
  $("keywords-row").hidden = !d.fields.some((f) => f.enable_analyzer);
  $("keywords").value = "";
  setMode(d.embedder ? "text" : "id");
  document.querySelector('[data-mode="text"]').disabled = !d.embedder;
  $("query").disabled = false;
  $("search").disabled = false;
}

function fillSelect(select, empty, values) {
  select.replaceChildren(el("option", { value: "" }, empty), ...values.map((v) => el("option", { value: v }, v)));
}

function setMode(mode) {
  state.mode = mode;
  for (const button of document.querySelectorAll(".mode")) {
    button.setAttribute("aria-selected", String(button.dataset.mode === mode));
  }
  $("query").placeholder = mode === "text" ? "Describe what you are looking for…" : "A stored id, e.g. a1 (several: separated by commas)";
}

// -- querying --------------------------------------------------------------------------------

function splitIds(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function similarBody(query) {
  const d = state.description;
  const body = { limit: Number($("limit").value) || 10, explain: true };
  body.output_fields = d.fields.filter((f) => f.type !== "json").map((f) => f.name);
  if (query.ids) body.ids = query.ids;
  if (query.texts) body.texts = query.texts;
  const keywords = $("keywords").value.trim();
  if (keywords && !$("keywords-row").hidden) body.keywords = keywords;
  const filter = $("filter").value.trim();
  if (filter) body.filter_expr = filter;
  const groupBy = $("group-by").value;
  if (groupBy) {
    body.group_by = groupBy;
    body.group_size = Number($("group-size").value) || 1;
  }
  const diversity = Number($("diversity").value);
  if (diversity > 0) body.diversity = diversity;
  const recency = $("recency-field").value;
  if (recency) {
    body.recency = { field: recency, scale: Number($("recency-scale").value), decay: Number($("recency-decay").value) };
  }
  const excluded = splitIds($("exclude").value);
  const self = $("exclude-self").checked && query.ids ? query.ids : [];
  if (excluded.length) body.exclude_ids = [...new Set([...excluded, ...self])];
  else if (self.length) body.exclude_ids = true;
  return body;
}

async function search(query) {
  if (!state.collection) return;
  await guarded(async () => {
    const body = similarBody(query);
    if (!body.ids && !body.texts && !body.keywords) {
      throw new ServiceError(0, "input", "type a query: a text, an id, or keywords");
    }
    setStatus("searching…");
    const started = performance.now();
    const hits = await api("POST", collectionPath("/similar"), body);
    const took = Math.round(performance.now() - started);
    state.last = { query, hits };
    $("welcome").hidden = true;
    await showQuery(query);
    showHits(hits);
    // Counts the answers shown, so that a reader (a person's script, a test) knows a new one came.
    state.shown += 1;
    $("hits").dataset.shown = String(state.shown);
    setStatus(`${hits.length} hit${hits.length === 1 ? "" : "s"} in ${took} ms`);
    await highlight(query, hits);
  });
}

function submitQuery(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return search({});
  return search(state.mode === "text" ? { texts: [text] } : { ids: splitIds(text) });
}

function moreLikeThis(id) {
  setMode("id");
  $("query").value = id;
  return search({ ids: [id] });
}

// -- hits ------------------------------------------------------------------------------------

function roles(fields) {
  const names = fields.map((f) => f.name);
  const title = TITLE_FIELDS.find((f) => names.includes(f)) || null;
  const text = TEXT_FIELDS.find((f) => names.includes(f) && f !== title)
    || (fields.find((f) => f.enable_analyzer) || {}).name || null;
  return { title, text };
}

function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(4);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function card(doc, rank, best) {
  const { title, text } = roles(state.description.fields);
  const heading = title && doc[title] ? String(doc[title]) : doc.id;
  const item = el("li", { class: "hit", "data-id": doc.id });
  const head = el("div", { class: "hit-head" },
    rank ? el("span", { class: "rank" }, String(rank)) : el("span", { class: "rank query-mark" }, "Q"),
    el("button", { type: "button", class: "hit-title", title: "More like this", onclick: () => moreLikeThis(doc.id) }, heading));
  if (doc.distance !== undefined) {
    const bar = el("span", { class: "bar" });
    const ratio = best > 0 ? Math.max(0.04, Math.min(1, doc.distance / best)) : 1;
    bar.style.width = `${Math.round(ratio * 100)}%`;
    head.append(el("span", { class: "score", title: `score (${state.description.metric})` },
      el("span", { class: "bar-track" }, bar), formatValue(doc.distance)));
  }
  item.append(head);
  item.append(el("div", { class: "hit-id" }, doc.id));
  if (text && doc[text]) item.append(el("p", { class: "hit-text" }, String(doc[text])));
  const chips = el("div", { class: "chips" });
  for (const field of state.description.fields) {
    if (field.name === title || field.name === text || !(field.name in doc)) continue;
    // A value the id already shows (an id built from it) is noise on the card.
    if (typeof doc[field.name] === "string" && doc[field.name].length > 8 && doc.id.includes(doc[field.name])) continue;
    chips.append(el("span", { class: "chip" }, el("b", {}, field.name), " ", formatValue(doc[field.name])));
  }
  if (chips.childElementCount) item.append(chips);
  const actions = el("div", { class: "hit-actions" });
  if (rank) actions.append(el("button", { type: "button", class: "more", onclick: () => moreLikeThis(doc.id) }, "More like this"));
  if (doc.explain) {
    const rows = Object.entries(doc.explain).map(([key, value]) => el("tr", {}, el("th", {}, key), el("td", {}, formatExplain(value))));
    actions.append(el("details", { class: "explain" }, el("summary", {}, "Why this score"), el("table", {}, ...rows)));
  }
  item.append(actions);
  return item;
}

function formatExplain(value) {
  if (value && typeof value === "object" && "rank" in value) return `rank ${value.rank}, score ${formatValue(value.score)}`;
  return formatValue(value);
}

function showHits(hits) {
  const list = $("hits");
  const best = hits.length ? Math.max(...hits.map((h) => h.distance)) : 0;
  list.replaceChildren(...hits.map((hit, i) => card(hit, i + 1, best)));
  if (!hits.length) list.append(el("li", { class: "empty" }, "No hits: loosen the filter or the options."));
}

async function showQuery(query) {
  const box = $("query-card");
  box.replaceChildren();
  if (query.texts) {
    box.append(el("div", { class: "query-text" }, el("span", { class: "rank query-mark" }, "Q"), el("q", {}, query.texts[0])));
  } else if (query.ids) {
    const fields = state.description.fields.filter((f) => f.type !== "json").map((f) => f.name);
    const params = new URLSearchParams();
    for (const id of query.ids) params.append("ids", id);
    for (const f of fields) params.append("output_fields", f);
    const found = await api("GET", collectionPath(`/documents?${params}`));
    const list = el("ol", { class: "hits query-hits" }, ...found.map((doc) => card(doc, 0, 0)));
    box.append(el("div", { class: "label" }, "More like"), list);
  }
}

// -- the map ---------------------------------------------------------------------------------

async function drawMap() {
  if (!state.collection) return;
  $("map-caption").textContent = "drawing the map…";
  const chosen = $("color-field").value || null;
  const clusters = chosen && chosen.startsWith("cluster:") ? Number(chosen.slice(8)) : 0;
  const [map, groups] = await Promise.all([
    api("POST", collectionPath("/map"), { sample: Number($("sample").value), seed: 0, color_field: clusters ? null : chosen }),
    clusters ? api("POST", collectionPath("/cluster"), { k: clusters, seed: 0 }) : null,
  ]);
  if (groups) colourByCluster(map, groups);
  state.map = map;
  renderMap();
  if (state.last) await highlight(state.last.query, state.last.hits);
}

// Each point's colour value becomes its cluster: its number and the words that set it apart.
function colourByCluster(map, groups) {
  const name = new Map();
  for (const group of groups) {
    const label = `#${group.label + 1}${group.terms.length ? ` ${group.terms.slice(0, 3).join(", ")}` : ""}`;
    for (const id of group.ids) name.set(id, label);
  }
  for (const point of map.points) point.color = name.get(point.id) || null;
  map.color_field = "cluster";
}

function colourScale(points, field) {
  const values = points.map((p) => p.color).filter((v) => v !== null && v !== undefined);
  const type = (state.description.fields.find((f) => f.name === field) || {}).type;
  if (!field || !values.length) return { colour: () => PALETTE[0], legend: [] };
  if (NUMERIC.includes(type) && new Set(values).size > PALETTE.length) {
    const low = Math.min(...values);
    const high = Math.max(...values);
    const colour = (v) => (v === null || v === undefined ? OTHER : ramp(high > low ? (v - low) / (high - low) : 0.5));
    return { colour, legend: [{ ramp: true, low, high }] };
  }
  const counts = new Map();
  for (const v of values) counts.set(String(v), (counts.get(String(v)) || 0) + 1);
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const shown = new Map(ranked.slice(0, PALETTE.length).map(([v], i) => [v, PALETTE[i]]));
  const legend = ranked.slice(0, PALETTE.length).map(([v, n]) => ({ label: v, count: n, colour: shown.get(v) }));
  const rest = ranked.slice(PALETTE.length).reduce((sum, [, n]) => sum + n, 0);
  if (rest) legend.push({ label: `${ranked.length - PALETTE.length} others`, count: rest, colour: OTHER });
  return { colour: (v) => shown.get(String(v)) || OTHER, legend };
}

// Viridis-like: five stops, linearly blended.
function ramp(t) {
  const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.max(0, Math.min(1, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((a, k) => Math.round(a + (stops[i + 1][k] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function renderMap() {
  const map = state.map;
  const root = $("map");
  root.replaceChildren();
  $("legend").replaceChildren();
  if (!map || !map.points.length) {
    $("map-caption").textContent = "The collection is empty: nothing to map.";
    return;
  }
  const xs = map.points.map((p) => p.x);
  const ys = map.points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, y1 - y0) || 1;
  const inner = MAP_SIZE - 2 * MAP_PAD;
  // One scale for both axes: distances on the page are distances in the plane.
  const sx = (x) => MAP_PAD + ((x - (x0 + x1) / 2) / span) * inner + inner / 2;
  const sy = (y) => MAP_PAD + inner / 2 - ((y - (y0 + y1) / 2) / span) * inner;
  state.scale = { sx, sy };
  root.append(svg("rect", { x: 0, y: 0, width: MAP_SIZE, height: MAP_SIZE, class: "map-bg" }));
  const { colour, legend } = colourScale(map.points, map.color_field);
  const dots = svg("g", { class: "dots" });
  // Fewer dots, larger ones: a small sample stays readable, a large one does not clot.
  const radius = Math.max(1.8, Math.min(4.2, 110 / Math.sqrt(map.points.length))).toFixed(1);
  for (const p of map.points) {
    const dot = svg("circle", { cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: radius, fill: colour(p.color) });
    dot.dataset.id = p.id;
    dot.dataset.color = p.color === null || p.color === undefined ? "" : String(p.color);
    dots.append(dot);
  }
  root.append(dots, svg("g", { id: "highlights" }));
  const ratio = map.basis.explained_variance_ratio.map((r) => `${(r * 100).toFixed(0)}%`);
  $("map-caption").textContent = `${map.sample.toLocaleString()} of ${map.count.toLocaleString()} documents, PCA `
    + `(the axes explain ${ratio[0]} and ${ratio[1]} of the variance): near on the map is similar, `
    + "but similar may lie apart. Click a dot for more like it.";
  renderLegend(legend, map.color_field);
}

function renderLegend(legend, field) {
  const list = $("legend");
  if (!legend.length) return;
  list.append(el("li", { class: "legend-title" }, field));
  for (const entry of legend) {
    if (entry.ramp) {
      const bar = el("span", { class: "ramp" });
      list.append(el("li", {}, formatValue(entry.low), bar, formatValue(entry.high)));
      continue;
    }
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = entry.colour;
    list.append(el("li", {}, swatch, entry.label, el("span", { class: "muted" }, ` ${entry.count}`)));
  }
  list.append(el("li", { class: "legend-marks" }, el("span", { class: "mark-query" }, "★"), "query ",
    el("span", { class: "mark-hit" }, "1"), "hits"));
}

async function highlight(query, hits) {
  if (!state.map || !state.map.points.length) return;
  const ids = [...(query.ids || []), ...hits.map((h) => h.id)];
  const placed = await api("POST", collectionPath("/map"), {
    sample: state.map.sample, seed: 0, ids, texts: query.texts || null,
  });
  const layer = $("highlights");
  if (!layer) return;
  layer.replaceChildren();
  const { sx, sy } = state.scale;
  const at = new Map(placed.projected.filter((p) => p.id).map((p) => [p.id, p]));
  const origin = query.texts ? placed.projected.find((p) => p.text) : at.get((query.ids || [])[0]);
  if (origin) {
    for (const hit of hits) {
      const p = at.get(hit.id);
      if (p) layer.append(svg("line", { x1: sx(origin.x), y1: sy(origin.y), x2: sx(p.x), y2: sy(p.y), class: "link-line" }));
    }
  }
  hits.forEach((hit, i) => {
    const p = at.get(hit.id);
    if (!p) return;
    const g = svg("g", { class: "hit-mark", transform: `translate(${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)})` });
    g.dataset.id = hit.id;
    const label = svg("text", { y: 3.5 });
    label.textContent = String(i + 1);
    g.append(svg("circle", { r: 8 }), label);
    layer.append(g);
  });
  if (origin) {
    const star = svg("path", { d: starPath(11, 4.6), class: "query-star", transform: `translate(${sx(origin.x).toFixed(1)},${sy(origin.y).toFixed(1)})` });
    layer.append(star);
  }
}

function starPath(outer, inner) {
  const points = [];
  for (let i = 0; i < 10; i += 1) {
    const r = i % 2 ? inner : outer;
    const a = (Math.PI / 5) * i - Math.PI / 2;
    points.push(`${(r * Math.cos(a)).toFixed(2)},${(r * Math.sin(a)).toFixed(2)}`);
  }
  return `M${points.join("L")}Z`;
}

function hover(event) {
  const tip = $("tooltip");
  const target = event.target.closest("[data-id]");
  if (!target) { tip.hidden = true; return; }
  const colour = target.dataset.color;
  tip.textContent = target.dataset.id + (colour ? ` · ${state.map.color_field}: ${colour}` : "");
  const box = $("map").getBoundingClientRect();
  tip.style.left = `${event.clientX - box.left + 12}px`;
  tip.style.top = `${event.clientY - box.top + 12}px`;
  tip.hidden = false;
}

function clickMap(event) {
  const target = event.target.closest("[data-id]");
  if (target) moreLikeThis(target.dataset.id);
}

// -- wiring ----------------------------------------------------------------------------------

function init() {
  $("signin").addEventListener("submit", connect);
  $("signout").addEventListener("click", signOut);
  $("error-close").addEventListener("click", clearError);
  $("collection").addEventListener("change", chooseCollection);
  $("query-form").addEventListener("submit", submitQuery);
  $("query").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("query-form").requestSubmit(); }
  });
  for (const button of document.querySelectorAll(".mode")) button.addEventListener("click", () => setMode(button.dataset.mode));
  $("diversity").addEventListener("input", () => {
    const v = Number($("diversity").value);
    $("diversity-value").textContent = v > 0 ? v.toFixed(2) : "off";
  });
  $("color-field").addEventListener("change", () => guarded(drawMap));
  $("sample").addEventListener("change", () => guarded(drawMap));
  $("map").addEventListener("mousemove", hover);
  $("map").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  $("map").addEventListener("click", clickMap);
  $("codops").value = localStorage.getItem("lookalike.codops") || "";
  const kept = sessionStorage.getItem("lookalike.token");
  if (kept) { $("token").value = kept; $("remember").checked = true; }
  setMode("text");
}

document.addEventListener("DOMContentLoaded", init);
