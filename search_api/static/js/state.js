// What the page holds: the collection, the query, the choices made; shared by the modules.

const body = document.body.dataset;

export const page = {
  collection: body.collection, // the version (an alias resolved): API calls name it
  chosen: body.chosen, // as chosen (an alias stays one): the URL names it
  labelField: body.labelField,
  patientField: body.patientField,
  // {point_id, payload} | {vector, name} | {positive: [ids], negative: [ids]}
  query: null,
  excludedPatient: null,
  selection: null, // ids chosen on the map, in force as a has_id filter
  extraClauses: [], // clauses no control shows (a tree's pick, a shared URL's): [{kind, clause}]
  examples: { positive: new Map(), negative: new Map() }, // id -> payload, for /recommend
  shown: { browse: [], results: [] }, // what each grid draws, for export
  browse: { offsets: [null], page: 0, size: 24 },
  searches: 0, // only the latest search's answer is drawn (a slower earlier one is dropped)
  map: null, // {ids, x, y, fields, index: Map(id -> i), matching: Set | null}
  view: "browse",
  onePer: "",
};

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function element(tag, className = "", text = "") {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text) made.textContent = text;
  return made;
}
