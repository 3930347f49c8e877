// The live tail page of `pgevents serve`: opens an EventSource on /events with the form's
// filters and shows the newest events first (at most MAX_ROWS).
"use strict";

const MAX_ROWS = 500;
const EVENT_NAMES = ["insert", "update", "delete", "truncate", "read", "field_update", "gap", "expired"];
const form = document.getElementById("filters");
const status = document.getElementById("status");
const rows = document.getElementById("events");
let source = null;

function setStatus(text, live) {
  status.textContent = text;
  status.className = live ? "live" : "down";
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === undefined || text === null ? "" : String(text);
  if (className) td.className = className;
  return td;
}

function show(message) {
  let parsed = {};
  try { parsed = JSON.parse(message.data); } catch (e) { parsed = {}; }
  const tr = document.createElement("tr");
  if (message.type === "gap") tr.className = "gap";
  const id = parsed.id === undefined ? "" : JSON.stringify(parsed.id);
  tr.append(cell(message.lastEventId), cell(message.type), cell(parsed.table_name), cell(id),
            cell(parsed.commit_time), cell(message.data, "data"));
  rows.prepend(tr);
  while (rows.children.length > MAX_ROWS) rows.lastChild.remove();
}

function connect(event) {
  event.preventDefault();
  disconnect();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) {
    if (String(value).trim() !== "") params.set(name, String(value).trim());
  }
  source = new EventSource("/events?" + params.toString());
  setStatus("connecting…", false);
  source.onopen = () => setStatus("live", true);
  source.onerror = () => setStatus(source.readyState === EventSource.CLOSED
    ? "refused (check the filters or the token; the response body says why)" : "reconnecting…", false);
  for (const name of EVENT_NAMES) source.addEventListener(name, show);
}

function disconnect() {
  if (source) source.close();
  source = null;
  setStatus("not connected", false);
}

form.addEventListener("submit", connect);
document.getElementById("stop").addEventListener("click", disconnect);
document.getElementById("clear").addEventListener("click", () => rows.replaceChildren());
