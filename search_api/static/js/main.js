// The search page: wires the modules together, and keeps the working state in the URL
// (collection, query, examples, filter, view, one-per) so that it is shared and the back
// button works. No inline script (the Content-Security-Policy forbids it).

import { api, base, say } from "./api.js";
import { exportHits, markExample } from "./cards.js";
import {
  applyFilter,
  buildFilter,
  pick,
  showFilter,
  wireHistograms,
  wireTypeAhead,
} from "./filters.js";
import { loadAudit } from "./audit.js";
import { loadJobs } from "./jobs.js";
import { drawMap, loadMap, refreshMatching, wireMap } from "./map.js";
import {
  browse,
  fromResult,
  groups,
  hooks,
  queryByExamples,
  queryByFile,
  queryByPoint,
  search,
} from "./queries.js";
import { $, $$, page } from "./state.js";
import { openDetail, wireViewer } from "./viewer.js";

const FILTER_WAIT_MS = 300; // controls changed in a burst apply once
const NO_QUERY =
  "Choose or drop a query image, click a picture, or pick examples (+ / −) to recommend from.";

const actions = {
  open: (hit) => openDetail(hit, actions),
  query: (hit) => (page.view === "results" ? fromResult(hit) : queryByPoint(hit)).then(remember),
  example: toggleExample,
};
hooks.actions = actions;
hooks.showResults = () => showView("results", { load: false });
hooks.afterSearch = () => {
  if (page.view === "groups") groups();
  if (page.view === "map") drawMap();
};

// --- views --------------------------------------------------------------------------------

function showView(view, { load = true, push = true } = {}) {
  page.view = view;
  for (const tab of $$(".tabs button")) tab.classList.toggle("active", tab.dataset.view === view);
  for (const section of $$(".view")) section.hidden = section.id !== `view-${view}`;
  say("");
  if (load) loadView();
  if (push) remember();
}

function loadView() {
  if (page.view === "browse") return browse(0);
  if (page.view === "results") {
    if (!page.query) say(NO_QUERY);
    return search();
  }
  if (page.view === "groups") return groups();
  if (page.view === "map") return loadMap();
  if (page.view === "jobs") return loadJobs();
  if (page.view === "audit") return loadAudit(openCase);
}

// Filters apply as they change: the view shown is loaded again with them.
let filterTimer = null;
function filterChanged() {
  showFilter();
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    if (page.view === "map") refreshMatching();
    if (["browse", "results", "groups"].includes(page.view)) loadView();
    remember();
  }, FILTER_WAIT_MS);
}

// --- examples (+ / −) -------------------------------------------------------------------------

function toggleExample(hit, kind) {
  const other = kind === "positive" ? "negative" : "positive";
  const chosen = page.examples[kind];
  if (chosen.has(hit.id)) chosen.delete(hit.id);
  else chosen.set(hit.id, hit.payload);
  page.examples[other].delete(hit.id);
  for (const article of $$(".card")) markExample(article);
  drawExamples();
}

function drawExamples() {
  const [positive, negative] = [page.examples.positive.size, page.examples.negative.size];
  $("#examples").hidden = !(positive || negative);
  $("#examples-text").textContent = `Examples: ${positive} positive, ${negative} negative`;
  $("#recommend").disabled = !positive;
}

function recommendFromExamples() {
  queryByExamples([...page.examples.positive.keys()], [...page.examples.negative.keys()]).then(
    remember,
  );
}

// --- the URL: working state, shared and walked back ---------------------------------------------

function stateURL() {
  const params = new URLSearchParams({ collection: page.chosen });
  if (page.view !== "browse") params.set("view", page.view);
  if (page.query?.point_id) params.set("q", page.query.point_id);
  if (page.query?.positive) {
    params.set("pos", page.query.positive.join(","));
    if (page.query.negative.length) params.set("neg", page.query.negative.join(","));
  }
  const filter = buildFilter();
  if (filter) params.set("filter", JSON.stringify(filter));
  if (page.onePer) params.set("per", page.onePer);
  return `?${params}`;
}

let restoring = false;
function remember() {
  if (restoring) return;
  const url = stateURL();
  if (url !== window.location.search) window.history.pushState(null, "", url);
}

async function restore() {
  restoring = true;
  try {
    const params = new URLSearchParams(window.location.search);
    try {
      applyFilter(params.has("filter") ? JSON.parse(params.get("filter")) : null);
    } catch {
      say("The filter in this address is not JSON: left out.", true);
    }
    page.onePer = params.get("per") ?? "";
    if ($("#one-per")) $("#one-per").value = page.onePer;
    showFilter();
    const view =
      params.get("view") ?? (params.has("q") || params.has("pos") ? "results" : "browse");
    showView(view, { load: false, push: false });
    if (params.has("q")) await restoreQuery(params.get("q"));
    else if (params.has("pos"))
      await queryByExamples(ids(params.get("pos")), ids(params.get("neg")));
    else {
      page.query = null;
      $("#query-figure").hidden = true;
    }
    if (params.has("q") || params.has("pos")) showView(view, { push: false });
    else loadView();
  } finally {
    restoring = false;
  }
}

const ids = (text) => (text ? text.split(",").filter(Boolean) : []);

async function restoreQuery(id) {
  if (page.query?.point_id === id) return;
  try {
    const { body } = await api(`${base()}/points/${encodeURIComponent(id)}`);
    await queryByPoint(body);
  } catch (error) {
    say(`The case in this address: ${error.message}`, true);
  }
}

async function openCase(id) {
  try {
    const { body } = await api(`${base()}/points/${encodeURIComponent(id)}`);
    actions.open(body);
  } catch (error) {
    say(error.message, true);
  }
}

// --- wiring -------------------------------------------------------------------------------

function wire() {
  $("#collection-select").addEventListener("change", (e) => e.target.form.submit());
  if (!page.collection) return;
  $("#file-input").addEventListener("change", (e) => {
    if (e.target.files.length) queryByFile(e.target.files[0]).then(remember);
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
    if (e.dataTransfer.files.length) queryByFile(e.dataTransfer.files[0]).then(remember);
  });
  $("#apply").addEventListener("click", () =>
    page.query ? showView("results") : showView("browse"),
  );
  $("#filters").addEventListener("change", (e) => {
    if (!e.target.classList.contains("type-ahead")) filterChanged();
  });
  wireTypeAhead(filterChanged);
  wireHistograms(filterChanged);
  $("#copy-filter").addEventListener("click", () =>
    navigator.clipboard.writeText($("#filter-json").textContent).catch(() => {
      window.getSelection().selectAllChildren($("#filter-json"));
    }),
  );
  const exclude = $("#exclude-patient");
  if (exclude) {
    exclude.addEventListener("click", () => {
      const excluding = page.excludedPatient === null;
      const patient = JSON.parse(exclude.dataset.patient);
      page.excludedPatient = excluding ? patient : null;
      exclude.classList.toggle("active", excluding);
      exclude.textContent = excluding
        ? `Patient ${patient}'s images left out (click to bring them back)`
        : `Exclude patient ${patient}'s images`;
      filterChanged();
    });
  }
  $("#recommend").addEventListener("click", recommendFromExamples);
  $("#examples-clear").addEventListener("click", () => {
    page.examples.positive.clear();
    page.examples.negative.clear();
    for (const article of $$(".card")) markExample(article);
    drawExamples();
  });
  const onePer = $("#one-per");
  onePer?.addEventListener("change", () => {
    page.onePer = onePer.value;
    search().then(remember);
  });
  for (const tab of $$(".tabs button"))
    tab.addEventListener("click", () => showView(tab.dataset.view));
  $("#group-field").addEventListener("change", groups);
  $("#browse-previous").addEventListener("click", () => browse(page.browse.page - 1));
  $("#browse-next").addEventListener("click", () => browse(page.browse.page + 1));
  for (const button of $$("button.export")) {
    button.addEventListener("click", () =>
      exportHits(page.shown[page.view] ?? [], button.dataset.format),
    );
  }
  for (const node of $$("#patients .pick")) {
    node.addEventListener("click", () => {
      pick(node.dataset.field, node.dataset.value);
      showFilter();
      showView("browse");
    });
  }
  wireMap({
    open: openCase,
    filterTo: (selected) => {
      page.selection = [...selected];
      filterChanged();
    },
    similarTo: (selected) => queryByExamples([...selected], []).then(remember),
  });
  wireViewer();
  window.addEventListener("popstate", restore);
  restore();
}

wire();
