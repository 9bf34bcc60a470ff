// Talking to the server: the JSON API of the same origin, and the status line.

import { $, page } from "./state.js";

export async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("signed out");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(detail(body) || response.statusText);
  return { status: response.status, body };
}

// FastAPI's validation errors are a list: their first message is the one to read.
const detail = (body) =>
  Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;

export function postJSON(path, body) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

export const base = () => `/collections/${encodeURIComponent(page.collection)}`;

export const pictureURL = (id, size = "thumb", window = null) =>
  `${base()}/points/${encodeURIComponent(id)}/picture?size=${size}` +
  (window ? `&window=${window.center}/${window.width}` : "");

export function say(text, isError = false) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  status.setAttribute("role", isError ? "alert" : "status");
}
