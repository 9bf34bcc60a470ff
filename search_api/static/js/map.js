// The embedding map: the t-SNE of a sample, coloured by a field; zoom (wheel) and pan (drag);
// a lasso selects cases (then a filter, or examples to recommend from); the filter in force
// dims the cases it leaves out; the tooltip names the case and its label.

import { api, base, pictureURL, postJSON } from "./api.js";
import { buildFilter } from "./filters.js";
import { caseName, fitInFrame, shown, spacingOf } from "./names.js";
import { $, element, page } from "./state.js";

const PALETTE = [
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
  "#bcbd22",
  "#393b79",
  "#ad494a",
  "#637939",
];
const OTHER = "#b0b0b0";
const LEFT_OUT = "rgba(150, 150, 150, 0.25)";
const PAD = 16;
const ZOOM_PER_DELTA = 0.002; // a wheel's notch (100) zooms by about a fifth
const CLICK_SLOP = 4; // px a press may move and still be a click
const POLL_MS = 2000;

const view = { k: 1, tx: 0, ty: 0 }; // screen = fitted * k + t
const drawing = { lasso: false, path: null, selected: [] };
const payloads = new Map(); // id -> payload, for the tooltip
let matchings = 0;

// actions: {open(id), filterTo(ids), similarTo(ids)}
let actions = null;

export async function loadMap() {
  if (page.map) return refreshMatching();
  let answer;
  try {
    answer = await api(`${base()}/map`);
  } catch (error) {
    mapStatus(error.message, true);
    return;
  }
  const state = answer.body.state;
  if (state.startsWith("failed")) {
    mapStatus(`The map could not be made: ${state}`, true);
    return;
  }
  if (answer.status === 202) {
    mapStatus("Making the map on a worker (t-SNE, once per version)…");
    setTimeout(() => page.view === "map" && loadMap(), POLL_MS);
    return;
  }
  const map = answer.body;
  map.index = new Map(map.ids.map((id, i) => [id, i]));
  map.matching = null;
  page.map = map;
  $("#map-colour").replaceChildren(
    ...Object.keys(map.fields).map(
      (name) => new Option(name, name, false, name === page.labelField),
    ),
  );
  mapStatus(
    `${map.ids.length} of ${map.points} points (t-SNE of a sample of ${map.version.collection})`,
  );
  await refreshMatching();
}

function mapStatus(text, isError = false) {
  const status = $("#map-status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

// The filter in force, applied to the map: the cases it keeps, asked of the server.
export async function refreshMatching() {
  const map = page.map;
  if (!map) return;
  const filter = buildFilter();
  const mine = ++matchings;
  if (!filter) {
    map.matching = null;
  } else {
    try {
      const { body } = await postJSON(`${base()}/map/matching`, { filter });
      if (mine !== matchings) return;
      map.matching = new Set(body.ids);
    } catch (error) {
      mapStatus(error.message, true);
      return;
    }
  }
  drawMap();
}

function fit(map, canvas) {
  const [xs, ys] = [map.x, map.y];
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (canvas.width - 2 * PAD) / (x1 - x0 || 1);
  const sy = (canvas.height - 2 * PAD) / (y1 - y0 || 1);
  map.fx = xs.map((x) => PAD + (x - x0) * sx);
  map.fy = ys.map((y) => canvas.height - PAD - (y - y0) * sy);
}

export function drawMap() {
  const map = page.map;
  if (!map) return;
  const canvas = $("#map");
  const context = canvas.getContext("2d");
  if (!map.fx) fit(map, canvas);
  map.px = map.fx.map((x) => x * view.k + view.tx);
  map.py = map.fy.map((y) => y * view.k + view.ty);
  const field = $("#map-colour").value;
  const values = field ? map.fields[field].map((v) => (v === null ? null : shown(v))) : [];
  const colours = colourScale(values);
  const selected = new Set(drawing.selected);
  context.clearRect(0, 0, canvas.width, canvas.height);
  let kept = 0;
  for (let i = 0; i < map.ids.length; i++) {
    const keeps = !map.matching || map.matching.has(map.ids[i]);
    kept += keeps;
    context.fillStyle = keeps ? colours.of(values[i]) : LEFT_OUT;
    context.beginPath();
    context.arc(map.px[i], map.py[i], keeps ? 2.5 : 1.8, 0, 2 * Math.PI);
    context.fill();
    if (selected.has(map.ids[i])) {
      context.lineWidth = 1.5;
      context.strokeStyle = "#000";
      context.stroke();
    }
  }
  canvas.dataset.drawn = String(map.ids.length);
  canvas.dataset.matching = String(kept);
  canvas.dataset.selected = String(selected.size);
  canvas.dataset.zoom = view.k.toFixed(3);
  drawQuery(context, map);
  if (drawing.path) drawLasso(context);
  legend(colours, map);
}

function colourScale(values) {
  const counts = new Map();
  for (const v of values) counts.set(v, (counts.get(v) || 0) + 1);
  const top = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, PALETTE.length);
  const assigned = new Map(top.map(([value], i) => [value, PALETTE[i]]));
  return { assigned, of: (value) => assigned.get(value) || OTHER };
}

function legend(colours, map) {
  const items = [...colours.assigned.entries()].map(([value, colour]) => {
    const item = element("span");
    const swatch = element("i");
    swatch.style.background = colour;
    item.append(swatch, String(value ?? "(missing)"));
    return item;
  });
  if (map.matching) {
    const item = element(
      "span",
      "hint",
      `pale: left out by the filter (${map.ids.length - map.matching.size})`,
    );
    items.push(item);
  }
  $("#map-legend").replaceChildren(...items);
}

// The query: where it is, if it is in the sample; otherwise the score-weighted mean of its
// results that are (t-SNE places a new point among its neighbours the same way).
function queryPosition(map) {
  if (!page.query) return null;
  const own = page.query.point_id && map.index.get(page.query.point_id);
  if (own !== undefined && own !== null && own !== false) return [map.px[own], map.py[own]];
  let [x, y, w] = [0, 0, 0];
  for (const hit of page.shown.results) {
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

function drawLasso(context) {
  context.lineWidth = 1.5;
  context.strokeStyle = "#2457c5";
  context.fillStyle = "rgba(36, 87, 197, 0.08)";
  context.setLineDash([5, 4]);
  context.beginPath();
  drawing.path.forEach(([x, y], i) => (i ? context.lineTo(x, y) : context.moveTo(x, y)));
  context.closePath();
  context.fill();
  context.stroke();
  context.setLineDash([]);
}

// --- pointer ------------------------------------------------------------------------------

function canvasPoint(event) {
  const canvas = $("#map");
  const rect = canvas.getBoundingClientRect();
  return [
    ((event.clientX - rect.left) * canvas.width) / rect.width,
    ((event.clientY - rect.top) * canvas.height) / rect.height,
  ];
}

function nearest([x, y]) {
  const map = page.map;
  if (!map || !map.px) return -1;
  let [best, bestDistance] = [-1, 64]; // within 8 px
  for (let i = 0; i < map.ids.length; i++) {
    const d = (map.px[i] - x) ** 2 + (map.py[i] - y) ** 2;
    if (d < bestDistance) [best, bestDistance] = [i, d];
  }
  return best;
}

async function hover(event) {
  const i = nearest(canvasPoint(event));
  const tip = $("#map-tip");
  if (i < 0 || drawing.path) {
    tip.hidden = true;
    return;
  }
  const map = page.map;
  const id = map.ids[i];
  tip.dataset.id = id;
  tip.style.left = `${map.px[i] + 12}px`;
  tip.style.top = `${map.py[i] + 12}px`;
  tip.hidden = false;
  let payload = payloads.get(id);
  try {
    payload ??= (await api(`${base()}/points/${encodeURIComponent(id)}`)).body.payload;
  } catch (error) {
    mapStatus(error.message, true);
    return;
  }
  payloads.set(id, payload);
  if (tip.dataset.id !== id) return; // the pointer moved on meanwhile
  const img = $("#map-tip-picture");
  img.src = pictureURL(id);
  fitInFrame(img, spacingOf(payload));
  const field = $("#map-colour").value;
  const label = field ? `${field}: ${shown(map.fields[field][i])}` : "";
  const text = $("#map-tip-text");
  text.replaceChildren(element("strong", "", caseName(payload)), element("br"), label);
}

function press(event) {
  const start = canvasPoint(event);
  const from = { ...view };
  let moved = false;
  if (drawing.lasso) drawing.path = [start];
  const move = (e) => {
    const at = canvasPoint(e);
    moved ||= Math.hypot(at[0] - start[0], at[1] - start[1]) > CLICK_SLOP;
    if (drawing.lasso) {
      drawing.path.push(at);
    } else {
      view.tx = from.tx + at[0] - start[0];
      view.ty = from.ty + at[1] - start[1];
    }
    drawMap();
  };
  const release = (e) => {
    window.removeEventListener("mousemove", move);
    window.removeEventListener("mouseup", release);
    if (drawing.lasso && moved) select(drawing.path);
    drawing.path = null;
    drawMap();
    if (!moved) {
      const i = nearest(canvasPoint(e));
      if (i >= 0) actions.open(page.map.ids[i]);
    }
  };
  window.addEventListener("mousemove", move);
  window.addEventListener("mouseup", release);
}

function select(path) {
  const map = page.map;
  drawing.selected = map.ids.filter((_, i) => inside([map.px[i], map.py[i]], path));
  const bar = $("#map-selection");
  bar.hidden = !drawing.selected.length;
  $("#map-selection-text").textContent = `${drawing.selected.length} selected`;
}

// Ray casting: a point is inside a polygon when a ray from it crosses its edges an odd number
// of times.
function inside([x, y], path) {
  let within = false;
  for (let i = 0, j = path.length - 1; i < path.length; j = i++) {
    const [xi, yi] = path[i];
    const [xj, yj] = path[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) within = !within;
  }
  return within;
}

function wheel(event) {
  event.preventDefault();
  const [x, y] = canvasPoint(event);
  const factor = Math.exp(-event.deltaY * ZOOM_PER_DELTA);
  view.tx = x - (x - view.tx) * factor;
  view.ty = y - (y - view.ty) * factor;
  view.k *= factor;
  drawMap();
}

function setLasso(on) {
  drawing.lasso = on;
  $("#map-lasso").classList.toggle("active", on);
  $("#map-pan").classList.toggle("active", !on);
  $("#map").classList.toggle("lasso", on);
}

export function wireMap(given) {
  actions = given;
  const canvas = $("#map");
  canvas.addEventListener("mousemove", hover);
  canvas.addEventListener("mouseleave", () => ($("#map-tip").hidden = true));
  canvas.addEventListener("mousedown", press);
  canvas.addEventListener("wheel", wheel, { passive: false });
  $("#map-colour").addEventListener("change", drawMap);
  $("#map-pan").addEventListener("click", () => setLasso(false));
  $("#map-lasso").addEventListener("click", () => setLasso(true));
  $("#map-reset").addEventListener("click", () => {
    Object.assign(view, { k: 1, tx: 0, ty: 0 });
    drawMap();
  });
  $("#selection-filter").addEventListener("click", () => actions.filterTo(drawing.selected));
  $("#selection-similar").addEventListener("click", () => actions.similarTo(drawing.selected));
  $("#selection-clear").addEventListener("click", () => {
    drawing.selected = [];
    $("#map-selection").hidden = true;
    drawMap();
  });
}
