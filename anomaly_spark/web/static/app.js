// Live status for the web app's pages. Values are written with textContent,
// never innerHTML, so text from the data cannot become markup.
"use strict";

const ACTIVE = new Set(["running", "incomplete"]);
const POLL_MS = 2000;

function formatPercent(rate) {
  return typeof rate === "number" ? (100 * rate).toFixed(2) + "%" : "n/a";
}

function setText(id, value) {
  const element = document.getElementById(id);
  if (element) {
    element.textContent = value === null || value === undefined ? "n/a" : String(value);
  }
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) {
    throw new Error(url + " returned HTTP " + response.status);
  }
  return response.json();
}

function showRun(run) {
  const status = document.getElementById("status");
  if (status) {
    status.textContent = run.status;
    status.className = "value status-" + run.status;
  }
  setText("best-model", run.model);
  setText("anomaly-count", run.anomalies);
  setText("rows", run.rows);
  setText("anomaly-rate", formatPercent(run.anomaly_rate));
  setText("drift", run.drift);
  setText("error", run.error || "");
  const log = document.getElementById("log-tail");
  if (log) {
    log.textContent = (run.log_tail || []).join("\n");
    log.hidden = !run.log_tail || run.log_tail.length === 0;
  }
  const link = document.getElementById("report-link");
  if (link && run.links && run.links.report) {
    link.href = run.links.report;
    link.hidden = false;
  }
  document.body.dataset.status = run.status;
  document.body.dataset.live = "true";
}

async function pollRun(runId) {
  try {
    const run = await fetchJson("/api/runs/" + encodeURIComponent(runId));
    showRun(run);
    if (ACTIVE.has(run.status)) {
      setTimeout(() => pollRun(runId), POLL_MS);
    }
  } catch (error) {
    setText("poll-error", "Status update failed: " + error.message + "; retrying.");
    setTimeout(() => pollRun(runId), 5 * POLL_MS);
  }
}

async function pollIndex() {
  const rows = document.querySelectorAll("#runs tr[data-run-id]");
  const active = Array.from(rows).filter((row) => ACTIVE.has(row.dataset.status));
  if (active.length === 0) {
    return;
  }
  try {
    const listing = await fetchJson("/api/runs");
    const changed = active.some((row) => {
      const run = listing.runs.find((item) => item.run_id === row.dataset.runId);
      return run && run.status !== row.dataset.status;
    });
    if (changed) {
      window.location.reload();
      return;
    }
  } catch (error) {
    // The next poll tries again; the page still shows the last known state.
  }
  setTimeout(pollIndex, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "run") {
    pollRun(document.body.dataset.runId);
  } else if (page === "index") {
    pollIndex();
  }
});
