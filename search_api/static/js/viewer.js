// The details dialog as a viewer: the full picture in its true proportions (pixel spacing),
// zoom (wheel) and pan (drag), and for DICOM and NIfTI window/level: the data's own windows,
// the CT presets, or a drag; each rendered from the original data by the server. Without a
// window the picture is the embedded one, and labelled so.

import { api, base, pictureURL } from "./api.js";
import { caseName, physicalRatio, spacingOf } from "./names.js";
import { $ } from "./state.js";

const WINDOW_WAIT_MS = 120; // while dragging, a new picture at most this often
const ZOOM_PER_DELTA = 0.002; // a wheel's notch (100) zooms by about a fifth
const MIN_SCALE = 0.5;
const MAX_SCALE = 16;

const viewer = {
  hit: null,
  info: null, // the server's /view: windows, embedded, range, spacing_mm
  window: null, // {name, center, width}; null: the embedded picture
  spacing: [1, 1],
  scale: 1,
  x: 0,
  y: 0,
  tool: "pan",
  timer: null,
};

// actions: {query(hit), example(hit, kind)}
export async function openDetail(hit, actions) {
  viewer.hit = hit;
  viewer.info = null;
  viewer.spacing = spacingOf(hit.payload);
  const dialog = $("#detail");
  dialog.dataset.id = hit.id;
  $("#detail-title").textContent = caseName(hit.payload);
  $("#detail-payload").textContent = JSON.stringify(hit.payload, null, 2);
  $("#detail-similar").onclick = () => {
    dialog.close();
    actions.query(hit);
  };
  $("#detail-positive").onclick = () => actions.example(hit, "positive");
  $("#detail-negative").onclick = () => actions.example(hit, "negative");
  offerWindows(null);
  reset();
  if (!dialog.open) dialog.showModal();
  try {
    const { body } = await api(`${base()}/points/${encodeURIComponent(hit.id)}/view`);
    if (viewer.hit !== hit) return;
    viewer.info = body;
    if (body.spacing_mm) viewer.spacing = body.spacing_mm;
    place();
    offerWindows(body);
  } catch (error) {
    $("#window-label").textContent = error.message;
  }
}

function offerWindows(info) {
  const windows = info?.windows ?? [];
  const windowed = Boolean(info && (windows.length || info.embedded));
  $("#window-choice").hidden = !windowed;
  $("#tool-window").hidden = !windowed;
  const select = $("#window-preset");
  select.replaceChildren(
    new Option("as embedded", ""),
    ...windows.map(
      (w, i) => new Option(`${w.name} (${number(w.center)}/${number(w.width)})`, String(i)),
    ),
  );
  if (!windowed) setTool("pan");
}

function show(window) {
  viewer.window = window;
  const img = $("#detail-picture");
  img.src = pictureURL(viewer.hit.id, "full", window);
  img.dataset.window = window ? `${window.center}/${window.width}` : "";
  const numbers = window && `center ${number(window.center)}, width ${number(window.width)}`;
  $("#window-label").textContent = window
    ? `rendered from the original data through ${window.name}: ${numbers}`
    : "as embedded: the picture the model saw";
}

const number = (value) => String(Math.round(value * 10) / 10);

function reset() {
  viewer.scale = 1;
  viewer.x = 0;
  viewer.y = 0;
  $("#window-preset").value = "";
  show(null);
  place();
}

// The picture's box: the stage's size at scale 1 in its true proportions, zoomed and moved.
function place() {
  const img = $("#detail-picture");
  const stage = $("#stage");
  if (!img.naturalWidth) return;
  const ratio = physicalRatio(img, viewer.spacing);
  const [width, height] = [stage.clientWidth, stage.clientHeight];
  const fitted = ratio >= width / height ? [width, width / ratio] : [height * ratio, height];
  const [w, h] = fitted.map((size) => size * viewer.scale);
  Object.assign(img.style, {
    width: `${w}px`,
    height: `${h}px`,
    left: `${(width - w) / 2 + viewer.x}px`,
    top: `${(height - h) / 2 + viewer.y}px`,
  });
  img.dataset.ratio = ratio.toFixed(4);
}

// Zoom about the pointer: the point under it stays under it.
function zoom(event) {
  event.preventDefault();
  const stage = $("#stage").getBoundingClientRect();
  const factor = Math.exp(-event.deltaY * ZOOM_PER_DELTA);
  const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, viewer.scale * factor));
  const applied = scale / viewer.scale;
  const [px, py] = [
    event.clientX - stage.left - stage.width / 2,
    event.clientY - stage.top - stage.height / 2,
  ];
  viewer.x = px - (px - viewer.x) * applied;
  viewer.y = py - (py - viewer.y) * applied;
  viewer.scale = scale;
  place();
}

function setTool(tool) {
  viewer.tool = tool;
  $("#tool-pan").classList.toggle("active", tool === "pan");
  $("#tool-window").classList.toggle("active", tool === "window");
  $("#stage").classList.toggle("windowing", tool === "window");
}

// Dragging: pans, or sets the window (across: its width; down: its center), over the range of
// the picture's values in about the stage's width.
function drag(event) {
  event.preventDefault();
  const start = { x: event.clientX, y: event.clientY, panX: viewer.x, panY: viewer.y };
  const from = viewer.window ?? viewer.info?.embedded ?? spanOf(viewer.info?.range);
  const step = viewer.info?.range
    ? (viewer.info.range[1] - viewer.info.range[0]) / $("#stage").clientWidth
    : 1;
  const move = (e) => {
    const [dx, dy] = [e.clientX - start.x, e.clientY - start.y];
    if (viewer.tool === "pan" || !from) {
      viewer.x = start.panX + dx;
      viewer.y = start.panY + dy;
      place();
      return;
    }
    const chosen = {
      name: "a dragged window",
      center: from.center + dy * step,
      width: Math.max(step, from.width + dx * step),
    };
    $("#window-preset").value = "";
    $("#window-label").textContent =
      `center ${number(chosen.center)}, width ${number(chosen.width)}…`;
    clearTimeout(viewer.timer);
    viewer.timer = setTimeout(() => show(chosen), WINDOW_WAIT_MS);
  };
  const stop = () => {
    window.removeEventListener("mousemove", move);
    window.removeEventListener("mouseup", stop);
  };
  window.addEventListener("mousemove", move);
  window.addEventListener("mouseup", stop);
}

const spanOf = (range) =>
  range ? { center: (range[0] + range[1]) / 2, width: range[1] - range[0] || 1 } : null;

export function wireViewer() {
  const stage = $("#stage");
  stage.addEventListener("wheel", zoom, { passive: false });
  stage.addEventListener("mousedown", drag);
  $("#detail-picture").addEventListener("load", place);
  $("#tool-pan").addEventListener("click", () => setTool("pan"));
  $("#tool-window").addEventListener("click", () => setTool("window"));
  $("#viewer-reset").addEventListener("click", reset);
  $("#window-preset").addEventListener("change", (e) => {
    const chosen = viewer.info?.windows[Number(e.target.value)];
    show(e.target.value === "" || !chosen ? null : chosen);
  });
  $("#detail-close").addEventListener("click", () => $("#detail").close());
}
