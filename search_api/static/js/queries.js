// Queries: by file, by case, by examples (/recommend); Browse (scroll, no query); Results (one
// per patient or series: the store's groups); the closest case per label.

import { api, base, pictureURL, postJSON, say } from "./api.js";
import { renderGrid } from "./cards.js";
import { showFilter } from "./filters.js";
import { caseName, fitInFrame, shown, spacingOf } from "./names.js";
import { $, element, page } from "./state.js";

const RECOMMEND_MOST = 200; // examples sent at once (a lasso may hold thousands)

// Set by main.js: what a card's buttons do, what follows a query, how a view is shown.
export const hooks = { actions: null, afterSearch: () => {}, showResults: () => {} };

const limit = () => Number($("#limit").value) || 12;

function queryBody(extra = {}) {
  const body = { filter: showFilter(), ...extra };
  if (page.query.point_id) body.point_id = page.query.point_id;
  else body.vector = page.query.vector;
  return body;
}

export async function search() {
  if (!page.query) {
    showFilter();
    return;
  }
  const mine = ++page.searches;
  say("Searching…");
  let hits;
  try {
    hits = page.query.positive ? await recommended() : await searched();
  } catch (error) {
    if (mine === page.searches) say(error.message, true);
    return;
  }
  if (mine !== page.searches) return;
  page.shown.results = hits;
  renderGrid($("#results"), hits, hooks.actions);
  const per = page.onePer && !page.query.positive ? ` (one per ${page.onePer})` : "";
  say(
    hits.length
      ? `${hits.length} results${per}`
      : "No result: loosen the filter or the score threshold.",
  );
  hooks.afterSearch();
}

async function searched() {
  const threshold = $("#score-threshold").value.trim();
  const body = queryBody({
    limit: limit(),
    score_threshold: threshold === "" ? null : Number(threshold),
  });
  if (!page.onePer) return (await postJSON(`${base()}/search`, body)).body;
  const grouped = { ...body, group_by: page.onePer, groups: body.limit, per_group: 1 };
  const { body: found } = await postJSON(`${base()}/groups`, grouped);
  return found.map((group) => group.hits[0]);
}

async function recommended() {
  const { positive, negative } = page.query;
  const body = { positive, negative, filter: showFilter(), limit: limit() };
  return (await postJSON(`${base()}/recommend`, body)).body;
}

function setQuery(query, picture, caption, spacing = [1, 1], id = "") {
  page.query = query;
  page.excludedPatient = null;
  const figure = $("#query-figure");
  figure.hidden = false;
  figure.dataset.id = id;
  const img = $("#query-picture");
  img.src = picture;
  fitInFrame(img, spacing);
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

export function queryByPoint(hit) {
  const label = page.labelField ? hit.payload[page.labelField] : undefined;
  const caption = `${caseName(hit.payload)}${label === undefined ? "" : ` (${shown(label)})`}`;
  const query = { point_id: hit.id, payload: hit.payload };
  setQuery(query, pictureURL(hit.id), caption, spacingOf(hit.payload), hit.id);
  hooks.showResults();
  return search();
}

export async function queryByFile(file) {
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
  hooks.showResults();
  await search();
}

// Examples chosen on cards or the map: cases like the positive ones and unlike the negative.
export function queryByExamples(positive, negative) {
  const like = positive.slice(0, RECOMMEND_MOST);
  const unlike = negative.slice(0, RECOMMEND_MOST);
  const cut =
    positive.length > like.length ? ` (the first ${RECOMMEND_MOST} of ${positive.length})` : "";
  const caption =
    `like ${like.length} case${like.length === 1 ? "" : "s"}${cut}` +
    (unlike.length ? `, unlike ${unlike.length}` : "");
  setQuery({ positive: like, negative: unlike }, pictureURL(like[0]), caption, [1, 1], "");
  hooks.showResults();
  return search();
}

// Click-to-results, measured by the browser (Performance API) for the browser test and
// anyone who opens the console: `performance.getEntriesByName("click-to-results")`.
export async function fromResult(hit) {
  performance.mark("result-click");
  await queryByPoint(hit);
  await new Promise((resolve) => requestAnimationFrame(() => resolve()));
  performance.measure("click-to-results", "result-click");
  const pictures = [...document.querySelectorAll("#results img")].map((img) =>
    img.decode().catch(() => null),
  );
  await Promise.all(pictures);
  performance.measure("click-to-pictures", "result-click");
}

// --- browse: the collection without a query -----------------------------------------------

export async function browse(index = 0) {
  const filter = showFilter();
  if (index === 0) page.browse.offsets = [null];
  const mine = ++page.searches;
  const counted = filter ? `?filter=${encodeURIComponent(JSON.stringify(filter))}` : "";
  let scrolled, count;
  try {
    const body = { filter, limit: page.browse.size, offset: page.browse.offsets[index] };
    [{ body: scrolled }, { body: count }] = await Promise.all([
      postJSON(`${base()}/scroll`, body),
      api(`${base()}/count${counted}`),
    ]);
  } catch (error) {
    if (mine === page.searches) say(error.message, true);
    return;
  }
  if (mine !== page.searches) return;
  page.browse.page = index;
  page.browse.offsets[index + 1] = scrolled.next_offset;
  page.shown.browse = scrolled.points;
  renderGrid($("#browse"), scrolled.points, hooks.actions);
  const first = index * page.browse.size + 1;
  const last = first + scrolled.points.length - 1;
  const matching = filter ? " matching the filter" : "";
  $("#browse-place").textContent = scrolled.points.length
    ? `cases ${first}–${last} of ${count.count}${matching}, in id order`
    : "";
  $("#browse-previous").disabled = index === 0;
  $("#browse-next").disabled = !scrolled.next_offset;
  $("#view-browse").dataset.page = String(index);
  say(count.count ? "" : "No case matches the filter.");
}

// --- the closest case per label ---------------------------------------------------------

export async function groups() {
  const tbody = $("#groups tbody");
  const field = $("#group-field").value;
  if (!page.query || page.query.positive || !field) {
    tbody.replaceChildren();
    say(
      field
        ? "Query by a case or a file first: the closest case per value is relative to it."
        : "No field to group by.",
    );
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
  const row = element("tr");
  row.dataset.id = hit.id;
  const name = caseName(hit.payload);
  const cells = [String(value), "", hit.score.toFixed(4), name].map((text) =>
    element("td", "", text),
  );
  const frame = element("div", "frame group-frame");
  const img = element("img", "thumb");
  img.src = pictureURL(hit.id);
  img.alt = `closest ${value}: ${name}`;
  img.addEventListener("click", () => hooks.actions.open(hit));
  fitInFrame(img, spacingOf(hit.payload));
  frame.append(img);
  cells[1].append(frame);
  cells[3].className = "name";
  row.append(...cells);
  return row;
}
