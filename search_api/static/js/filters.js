// The filter in force: built from the controls (facets, ranges, flags, the excluded patient,
// the map's selection, clauses no control shows) and put back into them from a URL.

import { api, base } from "./api.js";
import { $, $$, element, page } from "./state.js";

const KINDS = ["must", "must_not", "should"];
const TYPE_AHEAD_WAIT_MS = 150;

export function buildFilter() {
  const clauses = { must: [], must_not: [], should: [] };
  for (const set of $$("fieldset.facet")) {
    const values = $$("option", $(".values", set))
      .filter((o) => o.selected)
      .map((o) => o.value);
    if (values.length) {
      clauses[$(".mode", set).value].push({ key: set.dataset.field, match: { any: values } });
    }
  }
  for (const set of $$("fieldset.range")) {
    const range = {};
    const number = set.dataset.type !== "datetime";
    for (const [cls, bound] of [
      ["low", "gte"],
      ["high", "lte"],
    ]) {
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
  if (page.selection) clauses.must.push({ has_id: page.selection });
  for (const { kind, clause } of page.extraClauses) clauses[kind].push(clause);
  const filter = {};
  for (const [kind, list] of Object.entries(clauses)) if (list.length) filter[kind] = list;
  return Object.keys(filter).length ? filter : null;
}

export function showFilter() {
  const filter = buildFilter();
  $("#filter-json").textContent = JSON.stringify(filter, null, 2);
  drawExtraClauses();
  return filter;
}

// The controls set from a filter (a shared URL's, the back button's); what no control shows
// is kept as a clause of its own, listed above the filters with a button to drop it.
export function applyFilter(filter) {
  for (const select of $$("fieldset select.values"))
    for (const o of select.options) o.selected = false;
  for (const input of $$("fieldset.range input")) input.value = "";
  for (const select of $$("fieldset.flag .value")) select.value = "";
  page.excludedPatient = null;
  page.selection = null;
  page.extraClauses = [];
  for (const kind of KINDS) {
    for (const clause of filter?.[kind] ?? []) {
      if (!placed(kind, clause)) page.extraClauses.push({ kind, clause });
    }
  }
}

function placed(kind, clause) {
  const field = clause.key;
  if (kind === "must" && clause.has_id && !page.selection) {
    page.selection = clause.has_id;
    return true;
  }
  if (kind === "must_not" && field === page.patientField && clause.match?.value !== undefined) {
    page.excludedPatient = clause.match.value;
    return true;
  }
  if (kind === "should") return false;
  const facet = $(`fieldset.facet[data-field="${CSS.escape(field ?? "")}"]`);
  if (facet && clause.match?.any) {
    $(".mode", facet).value = kind;
    for (const value of clause.match.any) choose(facet, value);
    return true;
  }
  const range = $(`fieldset.range[data-field="${CSS.escape(field ?? "")}"]`);
  if (range && clause.range) {
    $(".mode", range).value = kind;
    $(".low", range).value = clause.range.gte ?? "";
    $(".high", range).value = clause.range.lte ?? "";
    return true;
  }
  const flag = $(`fieldset.flag[data-field="${CSS.escape(field ?? "")}"]`);
  if (flag && kind === "must" && typeof clause.match?.value === "boolean") {
    $(".value", flag).value = String(clause.match.value);
    return true;
  }
  return false;
}

// A value chosen in a facet's multi-select (added to it when the list holds only the most
// common values and this is another).
function choose(facet, value) {
  const select = $(".values", facet);
  let option = [...select.options].find((o) => o.value === value);
  if (!option) {
    option = new Option(value, value);
    select.prepend(option);
  }
  option.selected = true;
}

// One value of a field, alone in force (the patients tree's pick): its facet's only choice,
// or a clause of its own where no facet lists the field.
export function pick(field, value) {
  const facet = $(`fieldset.facet[data-field="${CSS.escape(field)}"]`);
  page.extraClauses = page.extraClauses.filter(({ clause }) => clause.key !== field);
  if (facet) {
    for (const o of $(".values", facet).options) o.selected = false;
    $(".mode", facet).value = "must";
    choose(facet, value);
  } else {
    page.extraClauses.push({ kind: "must", clause: { key: field, match: { value } } });
  }
}

function drawExtraClauses() {
  const list = $("#more-clauses");
  const chips = page.extraClauses.map((extra, i) => {
    const chip = element("span", "chip", `${extra.kind}: ${JSON.stringify(extra.clause)}`);
    const drop = element("button", "", "×");
    drop.type = "button";
    drop.title = "drop this clause";
    drop.addEventListener("click", () => {
      page.extraClauses.splice(i, 1);
      list.dispatchEvent(new Event("change", { bubbles: true }));
    });
    chip.append(drop);
    return chip;
  });
  if (page.selection) {
    const chip = element("span", "chip", `the map's selection: ${page.selection.length} cases`);
    const drop = element("button", "", "×");
    drop.type = "button";
    drop.id = "selection-drop";
    drop.addEventListener("click", () => {
      page.selection = null;
      list.dispatchEvent(new Event("change", { bubbles: true }));
    });
    chip.append(drop);
    chips.unshift(chip);
  }
  list.replaceChildren(...chips);
  list.hidden = !chips.length;
}

// Type-ahead over all of a keyword field's values (the multi-select lists the most common):
// a value typed whole, or picked from the suggestions, becomes one of the field's choices.
export function wireTypeAhead(onChosen) {
  for (const input of $$("fieldset.facet .type-ahead")) {
    const facet = input.closest("fieldset");
    let timer = null;
    input.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => suggest(facet, input), TYPE_AHEAD_WAIT_MS);
    });
    input.addEventListener("change", () => {
      const value = input.value.trim();
      const known = [...input.list.options].some((o) => o.value === value);
      if (!value || !known) return;
      choose(facet, value);
      input.value = "";
      onChosen();
    });
  }
}

async function suggest(facet, input) {
  const field = encodeURIComponent(facet.dataset.field);
  const text = encodeURIComponent(input.value.trim());
  try {
    const { body } = await api(`${base()}/values/${field}?text=${text}&limit=20`);
    input.list.replaceChildren(
      ...body.map(({ value, count }) => {
        const option = new Option(`${count} images`, value);
        option.value = value;
        return option;
      }),
    );
    input.dataset.suggested = String(body.length);
  } catch {
    input.list.replaceChildren();
  }
}

// A histogram's bar sets its field's range to the bar's.
export function wireHistograms(onChosen) {
  for (const bar of $$("svg.histogram rect")) {
    bar.addEventListener("click", () => {
      const set = bar.closest("fieldset");
      $(".low", set).value = bar.dataset.low;
      $(".high", set).value = bar.dataset.high;
      onChosen();
    });
  }
}
