// The Jobs view: ingests and reindexes from the job state in Redis, refreshed while shown.

import { api } from "./api.js";
import { $, element, page } from "./state.js";

const REFRESH_MS = 2000;
const WHEN = { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
let refresh = null;

export async function loadJobs() {
  clearTimeout(refresh);
  let body;
  try {
    ({ body } = await api("/jobs"));
  } catch (error) {
    $("#jobs-status").textContent = error.message;
    $("#jobs-status").classList.add("error");
    return;
  }
  $("#jobs-status").classList.remove("error");
  $("#jobs tbody").replaceChildren(...body.jobs.map(jobRow));
  const running = body.jobs.filter((job) => job.state === "running").length;
  $("#jobs-status").textContent = body.jobs.length
    ? `${body.jobs.length} recent jobs, ${running} running; refreshed every ${REFRESH_MS / 1000} s`
    : "No job yet: `medindex ingest` starts one.";
  const flower = $("#flower-link");
  flower.hidden = !body.flower;
  if (body.flower) flower.href = body.flower;
  refresh = setTimeout(() => page.view === "jobs" && loadJobs(), REFRESH_MS);
}

function jobRow(job) {
  const row = element("tr");
  row.dataset.job = job.job_id;
  const done = job.indexed + job.failed;
  const bar = element("progress");
  bar.max = job.total || 1;
  bar.value = done;
  const progress = element("td");
  progress.append(bar, ` ${done} / ${job.total}`);
  const failed = element("td", job.failed ? "error" : "", String(job.failed));
  if (job.reasons.length) {
    failed.title = job.reasons.map(([reason, n]) => `${n}× ${reason}`).join("\n");
    failed.append(element("div", "hint reason", job.reasons[0][0]));
  }
  const cells = [job.job_id, job.kind, job.collection, job.state].map((text) =>
    element("td", "", text),
  );
  cells[3].className = `state ${job.state}`;
  // Since the job started: a rate while it runs (a finished job's would decay with time).
  const running = job.state === "running";
  const rate = element("td", "", running ? job.images_per_s.toFixed(1) : "");
  const eta = element("td", "", running && job.eta_s != null ? duration(job.eta_s) : "");
  const started = element("td", "", new Date(job.created_at * 1000).toLocaleString([], WHEN));
  row.append(...cells, progress, rate, eta, failed, started);
  return row;
}

function duration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
