// The search page: queries through the JSON API of the same server, results drawn here.
// No inline script (the Content-Security-Policy forbids it): everything the page does is here.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const page = {
  collection: document.body.dataset.collection,
  labelField: document.body.dataset.labelField,
  patientField: document.body.dataset.patientField,
  query: null, // {point_id, payload} or {vector, name}; `picture`: what to show
  excludedPatient: null,
  hits: [],
  searches: 0, // only the latest search's answer is drawn (a slower earlier one is dropped)
  map: null, // {ids, x, y, fields, index: Map(id -> i)}
  view: "results",
};

const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
  "#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939",
];
const OTHER = "#b0b0b0";

// --- talking to the server ----------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return { status: response.status, body };
}

function postJSON(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

const base = () => `/collections/${encodeURIComponent(page.collection)}`;
const pictureURL = (id, size = "thumb") =>
  `${base()}/points/${encodeURIComponent(id)}/picture?size=${size}`;

function say(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// --- the filter in force --------------------------------------------------------------------

function buildFilter() {
  const clauses = { must: [], must_not: [] };
  for (const set of $$("fieldset.facet")) {
    const values = $$("option", $(".values", set)).filter((o) => o.selected).map((o) => o.value);
    if (values.length) {
      clauses[$(".mode", set).value].push({ key: set.dataset.field, match: { any: values } });
    }
  }
  for (const set of $$("fieldset.range")) {
    const range = {};
    const number = set.dataset.type !== "datetime";
    for (const [cls, bound] of [["low", "gte"], ["high", "lte"]]) {
      const text = $(`.${cls}`, set).value.trim();
      if (text !== "") range[bound] = number ? Number(text) : text;
    }
    if (Object.keys(range).length) {
      clauses[$(".mode", set).value].push({ key: set.dataset.field, range });
    }
  }
  for (const set of $$("fieldset.flag")) {
    const value = $(".value", set).value;
    if (value) clauses.must.push({ key: set.dataset.field, match: { value: value === "true" } });
  }
  if (page.excludedPatient !== null) {
    clauses.must_not.push({ key: page.patientField, match: { value: page.excludedPatient } });
  }
  const filter = {};
  for (const [kind, list] of Object.entries(clauses)) if (list.length) filter[kind] = list;
  return Object.keys(filter).length ? filter : null;
}

function showFilter() {
  const filter = buildFilter();
  $("#filter-json").textContent = JSON.stringify(filter, null, 2);
  return filter;
}

function queryBody(extra = {}) {
  const body = { filter: showFilter(), ...extra };
  if (page.query.point_id) body.point_id = page.query.point_id;
  else body.vector = page.query.vector;
  return body;
}

// --- queries ------------------------------------------------------------------------------

async function search() {
  if (!page.query) {
    showFilter();
    return;
  }
  const threshold = $("#score-threshold").value.trim();
  const body = queryBody({
    limit: Number($("#limit").value) || 12,
    score_threshold: threshold === "" ? null : Number(threshold),
  });
  say("Searching…");
  const mine = ++page.searches;
  try {
    const { body: hits } = await postJSON(`${base()}/search`, body);
    if (mine !== page.searches) return;
    page.hits = hits;
    renderResults(hits);
    say(`${hits.length} results`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  if (page.view === "groups") groups();
  if (page.view === "map") drawMap();
}

function setQuery(query, picture, caption) {
  page.query = query;
  page.excludedPatient = null;
  $("#query-figure").hidden = false;
  $("#query-picture").src = picture;
  $("#query-caption").textContent = caption;
  const button = $("#exclude-patient");
  if (button) {
    const patient = query.payload ? query.payload[page.patientField] : undefined;
    button.hidden = patient === undefined || patient === null;
    button.dataset.patient = JSON.stringify(patient ?? null);
    button.textContent = `Exclude patient ${patient ?? ""}'s images`;
    button.classList.remove("active");
  }
}

function queryByPoint(hit) {
  const label = page.labelField ? hit.payload[page.labelField] : undefined;
  const caption = `case ${hit.id}${label === undefined ? "" : ` (${shown(label)})`}`;
  setQuery({ point_id: hit.id, payload: hit.payload }, pictureURL(hit.id), caption);
  return search();
}

async function queryByFile(file) {
  const form = new FormData();
  form.append("image", file);
  say(`Reading ${file.name}…`);
  try {
    const { body } = await api(`${base()}/embed`, { method: "POST", body: form });
    setQuery({ vector: body.vector, name: file.name }, body.picture, `uploaded ${file.name}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  await search();
}

// Click-to-results, measured by the browser (Performance API) for the browser test and
// anyone who opens the console: `performance.getEntriesByName("click-to-results")`.
async function fromResult(hit) {
  performance.mark("result-click");
  await queryByPoint(hit);
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  performance.measure("click-to-results", "result-click");
  const pictures = $$("#results img").map((img) => img.decode().catch(() => null));
  await Promise.all(pictures);
  performance.measure("click-to-pictures", "result-click");
}

// --- results ------------------------------------------------------------------------------

function renderResults(hits) {
  const grid = $("#results");
  grid.replaceChildren(...hits.map(card));
}

function card(hit) {
  const article = document.createElement("article");
  article.className = "card";
  article.dataset.id = hit.id;
  const img = document.createElement("img");
  img.src = pictureURL(hit.id);
  img.alt = `case ${hit.id}`;
  img.title = "search from this case";
  img.className = "thumb";
  img.addEventListener("click", () => fromResult(hit));
  const score = document.createElement("p");
  score.className = "score";
  score.textContent = hit.score.toFixed(4);
  const label = document.createElement("p");
  label.className = "label";
  label.textContent = page.labelField ? shown(hit.payload[page.labelField]) : "";
  const more = document.createElement("button");
  more.type = "button";
  more.className = "details";
  more.textContent = "details";
  more.addEventListener("click", () => openDetail(hit));
  article.append(img, score, label, fields(hit.payload), more);
  return article;
}

// A value as shown: several (a list of findings) joined.
const shown = (value) => (Array.isArray(value) ? value.join(", ") : String(value ?? ""));

function fields(payload) {
  const list = document.createElement("dl");
  for (const [name, value] of Object.entries(payload)) {
    if (value === null || (typeof value === "object" && !Array.isArray(value))) continue; // `source`: details
    const term = document.createElement("dt");
    term.textContent = name;
    const data = document.createElement("dd");
    data.textContent = shown(value);
    data.dataset.field = name;
    list.append(term, data);
  }
  return list;
}

function openDetail(hit) {
  $("#detail-picture").src = pictureURL(hit.id, "full");
  $("#detail-title").textContent = `case ${hit.id}`;
  $("#detail-payload").textContent = JSON.stringify(hit.payload, null, 2);
  $("#detail-similar").onclick = () => {
    $("#detail").close();
    showView("results");
    queryByPoint(hit);
  };
  $("#detail").showModal();
}

async function openCase(id) {
  try {
    const { body } = await api(`${base()}/points/${encodeURIComponent(id)}`);
    openDetail(body);
  } catch (error) {
    say(error.message, true);
  }
}

// --- the closest case per label ---------------------------------------------------------

async function groups() {
  const tbody = $("#groups tbody");
  const field = $("#group-field").value;
  if (!page.query || !field) {
    tbody.replaceChildren();
    say(field ? "Query first: the closest case per value is relative to a query." : "No field to group by.");
    return;
  }
  try {
    const body = queryBody({ group_by: field, groups: 100, per_group: 1 });
    const { body: found } = await postJSON(`${base()}/groups`, body);
    tbody.replaceChildren(...found.map((group) => groupRow(group.group, group.hits[0])));
    say(`closest case for each of ${found.length} values of ${field}`);
  } catch (error) {
    say(error.message, true);
  }
}

function groupRow(value, hit) {
  const row = document.createElement("tr");
  row.dataset.id = hit.id;
  const cells = [String(value), "", hit.score.toFixed(4), hit.id].map((text) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    return cell;
  });
  const img = document.createElement("img");
  img.src = pictureURL(hit.id);
  img.className = "thumb";
  img.alt = `closest ${value}`;
  img.addEventListener("click", () => openDetail(hit));
  cells[1].append(img);
  row.append(...cells);
  return row;
}

// --- the embedding map ----------------------------------------------------------------------

async function loadMap() {
  if (page.map) return drawMap();
  let answer;
  try {
    answer = await api(`${base()}/map`);
  } catch (error) {
    $("#map-status").textContent = error.message;
    return;
  }
  const state = answer.body.state;
  if (state.startsWith("failed")) {
    $("#map-status").textContent = `The map could not be made: ${state}`;
    return;
  }
  if (answer.status === 202) {
    $("#map-status").textContent = "Making the map on a worker (t-SNE, once per version)…";
    setTimeout(() => page.view === "map" && loadMap(), 2000);
    return;
  }
  const map = answer.body;
  map.index = new Map(map.ids.map((id, i) => [id, i]));
  page.map = map;
  const colour = $("#map-colour");
  colour.replaceChildren(
    ...Object.keys(map.fields).map((name) => new Option(name, name, false, name === page.labelField)),
  );
  $("#map-status").textContent =
    `${map.ids.length} of ${map.points} points (t-SNE of a sample of ${map.version.collection})`;
  drawMap();
}

function drawMap() {
  const map = page.map;
  if (!map) return;
  const canvas = $("#map");
  const context = canvas.getContext("2d");
  const pad = 16;
  const [xs, ys] = [map.x, map.y];
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (canvas.width - 2 * pad) / (x1 - x0 || 1);
  const sy = (canvas.height - 2 * pad) / (y1 - y0 || 1);
  map.px = xs.map((x) => pad + (x - x0) * sx);
  map.py = ys.map((y) => canvas.height - pad - (y - y0) * sy);
  const field = $("#map-colour").value;
  const values = field ? map.fields[field].map((v) => (v === null ? null : shown(v))) : [];
  const colours = colourScale(values);
  context.clearRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < map.ids.length; i++) {
    context.fillStyle = colours.of(values[i]);
    context.beginPath();
    context.arc(map.px[i], map.py[i], 2.5, 0, 2 * Math.PI);
    context.fill();
  }
  canvas.dataset.drawn = String(map.ids.length);
  drawQuery(context, map);
  legend(colours);
}

function colourScale(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, PALETTE.length);
  const assigned = new Map(top.map(([value], i) => [value, PALETTE[i]]));
  return { assigned, of: (value) => assigned.get(value) || OTHER };
}

function legend(colours) {
  $("#map-legend").replaceChildren(
    ...[...colours.assigned.entries()].map(([value, colour]) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = colour;
      item.append(swatch, String(value ?? "(missing)"));
      return item;
    }),
  );
}

// The query: where it is, if it is in the sample; otherwise the score-weighted mean of its
// results that are (t-SNE places a new point among its neighbours the same way).
function queryPosition(map) {
  if (!page.query) return null;
  const own = page.query.point_id && map.index.get(page.query.point_id);
  if (own !== undefined && own !== null && own !== false) return [map.px[own], map.py[own]];
  let [x, y, w] = [0, 0, 0];
  for (const hit of page.hits) {
    const i = map.index.get(hit.id);
    if (i === undefined) continue;
    const weight = Math.max(hit.score, 0.001);
    x += weight * map.px[i];
    y += weight * map.py[i];
    w += weight;
  }
  return w ? [x / w, y / w] : null;
}

function drawQuery(context, map) {
  const at = queryPosition(map);
  const canvas = $("#map");
  if (!at) {
    delete canvas.dataset.query;
    return;
  }
  const [x, y] = at;
  context.lineWidth = 3;
  context.strokeStyle = "#ffffff";
  context.beginPath();
  context.arc(x, y, 9, 0, 2 * Math.PI);
  context.stroke();
  context.lineWidth = 2;
  context.strokeStyle = "#000000";
  context.stroke();
  context.beginPath();
  context.moveTo(x - 13, y);
  context.lineTo(x + 13, y);
  context.moveTo(x, y - 13);
  context.lineTo(x, y + 13);
  context.stroke();
  canvas.dataset.query = `${x.toFixed(1)},${y.toFixed(1)}`;
}

function nearestOnMap(event) {
  const map = page.map;
  if (!map || !map.px) return -1;
  const rect = event.target.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * event.target.width) / rect.width;
  const y = ((event.clientY - rect.top) * event.target.height) / rect.height;
  let [best, bestDistance] = [-1, 64]; // within 8 px
  for (let i = 0; i < map.ids.length; i++) {
    const d = (map.px[i] - x) ** 2 + (map.py[i] - y) ** 2;
    if (d < bestDistance) [best, bestDistance] = [i, d];
  }
  return best;
}

function hoverMap(event) {
  const i = nearestOnMap(event);
  const tip = $("#map-tip");
  if (i < 0) {
    tip.hidden = true;
    return;
  }
  const map = page.map;
  const field = $("#map-colour").value;
  $("#map-tip-picture").src = pictureURL(map.ids[i]);
  $("#map-tip-text").textContent = field ? `${field}: ${shown(map.fields[field][i])}` : map.ids[i];
  tip.style.left = `${map.px[i] + 12}px`;
  tip.style.top = `${map.py[i] + 12}px`;
  tip.hidden = false;
}

// --- wiring -------------------------------------------------------------------------------

function showView(view) {
  page.view = view;
  for (const tab of $$(".tabs button")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const section of $$(".view")) section.hidden = section.id !== `view-${view}`;
  say("");
  if (view === "groups") groups();
  if (view === "map") loadMap();
}

function wire() {
  $("#collection-select").addEventListener("change", (e) => e.target.form.submit());
  if (!page.collection) return;
  $("#file-input").addEventListener("change", (e) => {
    if (e.target.files.length) queryByFile(e.target.files[0]);
  });
  const drop = $("#drop-zone");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) queryByFile(e.dataTransfer.files[0]);
  });
  $("#apply").addEventListener("click", search);
  for (const control of $$("#filters select, #filters input")) {
    control.addEventListener("change", showFilter);
  }
  $("#copy-filter").addEventListener("click", () =>
    navigator.clipboard.writeText($("#filter-json").textContent).catch(() => {
      window.getSelection().selectAllChildren($("#filter-json"));
    }),
  );
  const exclude = $("#exclude-patient");
  if (exclude) {
    exclude.addEventListener("click", () => {
      const excluding = page.excludedPatient === null;
      page.excludedPatient = excluding ? JSON.parse(exclude.dataset.patient) : null;
      exclude.classList.toggle("active", excluding);
      const patient = JSON.parse(exclude.dataset.patient);
      exclude.textContent = excluding
        ? `Patient ${patient}'s images left out (click to bring them back)`
        : `Exclude patient ${patient}'s images`;
      search();
    });
  }
  for (const tab of $$(".tabs button")) tab.addEventListener("click", () => showView(tab.dataset.view));
  $("#group-field").addEventListener("change", groups);
  $("#map-colour").addEventListener("change", drawMap);
  $("#map").addEventListener("mousemove", hoverMap);
  $("#map").addEventListener("mouseleave", () => ($("#map-tip").hidden = true));
  $("#map").addEventListener("click", (e) => {
    const i = nearestOnMap(e);
    if (i >= 0) openCase(page.map.ids[i]);
  });
  $("#detail-close").addEventListener("click", () => $("#detail").close());
  showFilter();
}

wire();
