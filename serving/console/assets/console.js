// The support console. Plain DOM, no build step: every value goes in through textContent, never as HTML.
"use strict";

// ?page_size=N on the page URL shows N high-risk users a page.
const PAGE_SIZE = Number(new URLSearchParams(window.location.search).get("page_size")) || 20;
const state = { page: 1, query: "" };

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem("churn-console-token");
}

// A JSON read through the API's guards. A 401 shows the token form; giving a token reloads what the page shows.
async function read(path, params) {
  const url = `${path}?${new URLSearchParams(params)}`;
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(url, { headers });
  if (response.status === 401) {
    $("token-panel").hidden = false;
    throw new ConsoleError(401, "This service needs an API token: enter it above.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ConsoleError(response.status, describeError(response.status, body));
  }
  return body;
}

class ConsoleError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function describeError(status, body) {
  const detail = typeof body.detail === "string" ? body.detail : "";
  if (status === 404) return `Unknown user: ${detail || "no account is known for this id"}.`;
  if (status === 422) return "A user id is digits only (1, 2, 3, ...).";
  if (status === 503) return `The answer is not available right now: ${detail || "the service is not ready"}.`;
  return `The service answered ${status}${detail ? `: ${detail}` : ""}.`;
}

function showMessage(text, isError) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
  message.hidden = false;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)} %`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "unknown";
  const hours = seconds / 3600;
  if (hours < 1) return `${Math.round(seconds / 60)} minutes old`;
  if (hours < 48) return `${hours.toFixed(1)} hours old`;
  return `${(hours / 24).toFixed(1)} days old`;
}

function fill(list, items) {
  list.replaceChildren(
    ...items.map((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      return item;
    }),
  );
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = 300;
  const height = 28;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const top = Math.max(1, ...values.filter((v) => v !== null));
  const step = width / Math.max(values.length, 1);
  values.forEach((value, i) => {
    if (value === null) return;
    const bar = document.createElementNS(ns, "rect");
    const h = Math.max(1, (value / top) * height);
    bar.setAttribute("x", (i * step + 1).toFixed(1));
    bar.setAttribute("y", (height - h).toFixed(1));
    bar.setAttribute("width", Math.max(1, step - 2).toFixed(1));
    bar.setAttribute("height", h.toFixed(1));
    svg.appendChild(bar);
  });
  return svg;
}

function showActivity(activity) {
  const box = $("activity");
  if (!activity.days.length) {
    box.textContent = "No daily snapshots in the last 30 days.";
    return;
  }
  box.replaceChildren(
    ...activity.series.map((series) => {
      const row = document.createElement("div");
      row.className = "spark";
      row.dataset.feature = series.feature;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = series.description;
      const latest = document.createElement("span");
      const last = series.values[series.values.length - 1];
      latest.textContent = last === null ? "–" : String(last);
      row.append(label, sparkline(series.values), latest);
      return row;
    }),
  );
}

// Today's events so far (the push path's view): "<count> <event type>, ... (as of HH:MM UTC)".
function today(summary) {
  if (!summary) return "not served";
  const counted = Object.entries(summary.events).filter(([, count]) => count > 0);
  if (!counted.length) return `no events yet on ${summary.day}`;
  const words = counted.map(([type, count]) => `${count} ${type}`).join(", ");
  return `${words} (as of ${summary.as_of})`;
}

function showUser(answer) {
  const prediction = answer.prediction;
  $("status").textContent = prediction.status;
  const scored = prediction.status === "scored";
  $("probability").textContent = scored ? percent(prediction.churn_probability) : "not scored";
  $("band").textContent = scored ? `${prediction.risk_band} risk` : "";
  $("band").className = `badge ${scored ? prediction.risk_band : ""}`;
  $("band").hidden = !scored;
  $("detail").textContent = prediction.detail || "";
  $("detail").hidden = scored;
  fill($("reasons"), answer.reasons.length ? answer.reasons : ["No reasons: the user is not scored."]);
  $("features-as-of").textContent = prediction.features_as_of || "none";
  $("freshness").textContent = age(answer.features_age_seconds);
  $("today").textContent = today(prediction.today);
  $("model").textContent = `${prediction.model.name} v${prediction.model.version} (${prediction.model.alias}), ${prediction.feature_service}`;
  showActivity(answer.activity);
  $("result").hidden = false;
}

async function lookUp(userId) {
  $("message").hidden = true;
  $("result").hidden = true;
  if (!/^[0-9]+$/.test(userId)) {
    showMessage("A user id is digits only (1, 2, 3, ...).", true);
    return;
  }
  try {
    showUser(await read("/console/api/user", { user_id: userId }));
  } catch (error) {
    showMessage(error.message, error.status !== 404);
  }
}

function riskRow(row) {
  const tr = document.createElement("tr");
  const link = document.createElement("a");
  link.href = "#";
  link.textContent = String(row.user_id);
  link.addEventListener("click", (event) => {
    event.preventDefault();
    $("user-id").value = String(row.user_id);
    lookUp(String(row.user_id));
  });
  const cells = [String(row.rank), link, percent(row.churn_probability), row.why];
  tr.append(
    ...cells.map((content) => {
      const td = document.createElement("td");
      if (typeof content === "string") td.textContent = content;
      else td.appendChild(content);
      return td;
    }),
  );
  return tr;
}

async function loadRisk() {
  const empty = $("risk-empty");
  try {
    const page = await read("/console/api/high-risk", { q: state.query, page: state.page, page_size: PAGE_SIZE });
    const pages = Math.max(1, Math.ceil(page.total / page.page_size));
    $("risk-date").textContent = page.scoring_date ? `(batch scoring of ${page.scoring_date})` : "";
    $("risk-table").querySelector("tbody").replaceChildren(...page.rows.map(riskRow));
    $("risk-page").textContent = `Page ${page.page} of ${pages} (${page.total} users)`;
    $("risk-prev").disabled = page.page <= 1;
    $("risk-next").disabled = page.page >= pages;
    empty.hidden = page.rows.length > 0;
    empty.textContent = page.scoring_date ? "No high-risk user matches." : "Batch scoring has not written a list yet.";
  } catch (error) {
    empty.hidden = false;
    empty.textContent = error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("lookup-form").addEventListener("submit", (event) => {
    event.preventDefault();
    lookUp($("user-id").value.trim());
  });
  $("risk-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.query = $("risk-search").value.trim();
    state.page = 1;
    loadRisk();
  });
  $("risk-prev").addEventListener("click", () => {
    state.page -= 1;
    loadRisk();
  });
  $("risk-next").addEventListener("click", () => {
    state.page += 1;
    loadRisk();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("churn-console-token", $("token").value);
    $("token-panel").hidden = true;
    loadRisk();
    const userId = $("user-id").value.trim();
    if (userId) lookUp(userId);
  });
  loadRisk();
});
