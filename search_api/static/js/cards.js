// A grid of cases (Browse, Results): each card its picture in true proportions, its name, score,
// label and fields; actions to open it, search from it, or keep it as an example. Export.

import { pictureURL } from "./api.js";
import { caseName, fitInFrame, shown, spacingOf } from "./names.js";
import { element, page } from "./state.js";

// actions: {open(hit), query(hit), example(hit, kind)}
export function renderGrid(grid, hits, actions) {
  grid.replaceChildren(...hits.map((hit) => card(hit, actions)));
}

function card(hit, actions) {
  const article = element("article", "card");
  article.dataset.id = hit.id;
  const frame = element("div", "frame");
  const img = element("img", "thumb");
  img.src = pictureURL(hit.id);
  img.alt = caseName(hit.payload);
  img.title = "search from this case";
  img.addEventListener("click", () => actions.query(hit));
  fitInFrame(img, spacingOf(hit.payload));
  frame.append(img);
  const name = element("p", "name", caseName(hit.payload));
  name.title = name.textContent;
  article.append(frame, name);
  if (hit.score !== undefined) article.append(element("p", "score", hit.score.toFixed(4)));
  const label = page.labelField ? shown(hit.payload[page.labelField]) : "";
  article.append(element("p", "label", label), fields(hit.payload), buttons(hit, actions));
  markExample(article);
  return article;
}

function buttons(hit, actions) {
  const row = element("div", "actions");
  const more = element("button", "details", "details");
  more.type = "button";
  more.addEventListener("click", () => actions.open(hit));
  row.append(more);
  for (const [kind, text, title] of [
    ["positive", "+", "a positive example: recommend cases like it"],
    ["negative", "−", "a negative example: recommend cases unlike it"],
  ]) {
    const toggle = element("button", `example ${kind}`, text);
    toggle.type = "button";
    toggle.title = title;
    toggle.addEventListener("click", () => actions.example(hit, kind));
    row.append(toggle);
  }
  return row;
}

// A card's example buttons show whether it is one.
export function markExample(article) {
  for (const kind of ["positive", "negative"]) {
    const on = page.examples[kind].has(article.dataset.id);
    article.querySelector(`.example.${kind}`).classList.toggle("active", on);
  }
}

function fields(payload) {
  const list = element("dl");
  for (const [name, value] of Object.entries(payload)) {
    // `source` (an object) and the audit's fingerprints (`fp_*`, hashes) are for the details
    if (value === null || (typeof value === "object" && !Array.isArray(value))) continue;
    if (name.startsWith("fp_")) continue;
    const term = element("dt", "", name);
    const data = element("dd", "", shown(value));
    data.dataset.field = name;
    list.append(term, data);
  }
  return list;
}

// --- export -------------------------------------------------------------------------------

// The cases a grid shows, by key and id (and score, label, name), as a file to download.
export function exportHits(hits, format) {
  const rows = hits.map((hit) => ({
    key: hit.payload.source?.key ?? "",
    name: caseName(hit.payload),
    id: hit.id,
    ...(hit.score === undefined ? {} : { score: hit.score }),
    ...(page.labelField ? { [page.labelField]: shown(hit.payload[page.labelField]) } : {}),
  }));
  const text = format === "json" ? JSON.stringify(rows, null, 2) : csv(rows);
  const link = element("a");
  link.href = URL.createObjectURL(new Blob([text], { type: `text/${format}` }));
  link.download = `${page.chosen}-${page.view}.${format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

function csv(rows) {
  if (!rows.length) return "";
  const columns = Object.keys(rows[0]);
  const cell = (value) => {
    const text = String(value ?? "");
    return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  };
  return [columns, ...rows.map((row) => columns.map((c) => row[c]))]
    .map((line) => line.map(cell).join(","))
    .join("\n");
}
