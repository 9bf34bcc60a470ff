// The Audit view: the collection's last `medindex audit`: its counts, thresholds (and where
// they come from), the nearest-neighbour histogram with them marked, and its pairs side by
// side, filtered by finding; each picture opens its case.

import { api, base, pictureURL } from "./api.js";
import { $, element, page } from "./state.js";

const SVG = "http://www.w3.org/2000/svg";
const FINDINGS = {
  all: () => true,
  duplicates: (pair) => pair.cluster !== "",
  cross_split: (pair) => pair.cross_split === "true",
  cross_patient: (pair) => pair.cross_patient === "true",
  label_conflict: (pair) => Number(pair.label_conflict) > 0,
  same_volume: (pair) => pair.same_volume === "true",
};
const COUNTS = [
  ["points_audited", "points audited"],
  ["duplicate_clusters", "duplicate clusters"],
  ["redundant_images", "redundant images"],
  ["image_leaks_across_splits", "images across splits"],
  ["patients_across_splits", "patients across splits"],
  ["images_across_patients", "images under two patients"],
  ["label_conflicts", "label conflicts"],
  ["adjacent_slices", "adjacent slices (apart)"],
  ["outliers", "outliers"],
];
let report = null;

export async function loadAudit(open) {
  const status = $("#audit-status");
  try {
    ({ report } = (await api(`${base()}/audit`)).body);
  } catch (error) {
    status.textContent = error.message;
    status.classList.add("error");
    return;
  }
  status.classList.remove("error");
  $("#audit-body").hidden = !report;
  if (!report) {
    status.textContent = `No audit of this collection yet: medindex audit --collection ${page.chosen}`;
    return;
  }
  const when = new Date().toLocaleString();
  status.textContent = `audit ${report.job_id}: ${report.points_audited} points in ${report.runtime_s} s (shown ${when})`;
  drawCounts(report);
  drawThresholds(report.thresholds);
  drawHistogram(report.histogram, report.thresholds);
  $("#audit-finding").onchange = () => drawPairs(open);
  drawPairs(open);
}

function drawCounts(report) {
  const counts = { ...report.counts, points_audited: report.points_audited };
  const tiers = Object.entries(report.counts.pairs_by_tier)
    .map(([tier, n]) => `${n} ${tier}`)
    .join(", ");
  const items = COUNTS.map(([key, name]) => {
    const item = element("li");
    item.dataset.count = key;
    item.append(element("strong", "", String(counts[key])), ` ${name}`);
    return item;
  });
  items.push(element("li", "hint", `duplicate pairs by tier: ${tiers}`));
  $("#audit-counts").replaceChildren(...items);
}

function drawThresholds(limits) {
  const rows = [
    ["embedding cosine ≥", limits.embedding_cosine, limits.sources.embedding],
    ["pHash distance ≤", limits.phash_distance, limits.sources.phash],
    ["outlier cosine <", limits.outlier_cosine, limits.sources.outlier],
  ].map(([name, value, source]) => {
    const row = element("tr");
    row.append(element("td", "", name), element("td", "", String(value)), element("td", "hint", source));
    return row;
  });
  $("#audit-thresholds tbody").replaceChildren(...rows);
}

function drawHistogram(histogram, limits) {
  const svg = $("#audit-histogram");
  const [width, height] = [600, 160];
  const { counts, edges } = histogram;
  const low = edges[0];
  const high = edges[edges.length - 1];
  const top = Math.max(1, ...counts);
  const x = (value) => ((value - low) / (high - low)) * width;
  const shapes = counts.map((count, i) => {
    const bar = document.createElementNS(SVG, "rect");
    const tall = (count / top) * (height - 20);
    bar.setAttribute("x", x(edges[i]));
    bar.setAttribute("width", Math.max(1, x(edges[i + 1]) - x(edges[i]) - 1));
    bar.setAttribute("y", height - tall);
    bar.setAttribute("height", tall);
    bar.setAttribute("class", "bar");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${count} points: ${edges[i].toFixed(3)}–${edges[i + 1].toFixed(3)}`;
    bar.append(title);
    return bar;
  });
  for (const [value, name] of [
    [limits.embedding_cosine, "duplicate"],
    [limits.outlier_cosine, "outlier"],
  ]) {
    if (value < low || value > high) continue;
    const line = document.createElementNS(SVG, "line");
    for (const [key, v] of [["x1", x(value)], ["x2", x(value)], ["y1", 0], ["y2", height]]) {
      line.setAttribute(key, v);
    }
    line.setAttribute("class", `limit ${name}`);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${name} threshold ${value}`;
    line.append(title);
    shapes.push(line);
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(...shapes);
  $("#audit-range").textContent =
    `nearest-neighbour cosine ${low.toFixed(3)} – ${high.toFixed(3)}; ` +
    "red: duplicate threshold, blue: outlier threshold";
}

function drawPairs(open) {
  const keep = FINDINGS[$("#audit-finding").value] ?? FINDINGS.all;
  const pairs = report.pairs.filter(keep);
  $("#audit-shown").textContent = `${pairs.length} of ${report.pairs.length} pairs`;
  $("#audit-pairs").replaceChildren(...pairs.map((pair) => pairCard(pair, open)));
}

function pairCard(pair, open) {
  const article = element("article", "pair");
  article.dataset.tier = pair.tier;
  const pictures = element("div", "pictures");
  for (const [id, key] of [
    [pair.point_a, pair.key_a],
    [pair.point_b, pair.key_b],
  ]) {
    const figure = element("figure");
    const img = element("img", "thumb");
    img.src = pictureURL(id);
    img.alt = key;
    img.title = `open ${key}`;
    img.addEventListener("click", () => open(id));
    figure.append(img, element("figcaption", "", key));
    pictures.append(figure);
  }
  const facts = [`${pair.tier} ${Number(pair.similarity).toFixed(4)}`];
  if (pair.cluster !== "") facts.push(`cluster ${pair.cluster}`);
  if (pair.cross_split === "true") facts.push("across splits");
  if (pair.cross_patient === "true") facts.push("two patients");
  if (Number(pair.label_conflict) > 0) facts.push(`labels differ (${pair.label_conflict})`);
  if (pair.same_volume === "true") facts.push("same volume");
  article.append(pictures, element("p", "facts", facts.join(" · ")));
  return article;
}
