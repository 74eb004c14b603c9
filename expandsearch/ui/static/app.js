// The ExpandSearch page: a live episode view and a trace browser over one JSON view of a turn
// (expandsearch/ui/views.py). Everything the model, the corpus or a user wrote goes into the page as text
// (textContent / text nodes, never innerHTML), so a passage holding <script> shows as text and never runs.
"use strict";

const state = { token: sessionStorage.getItem("expandsearch-token") || "", info: null, traces: [] };

// ------------------------------------------------------------------------------------------- DOM helpers

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);

function showPageError(message) {
  const box = $("page-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function seconds(value) {
  return typeof value === "number" ? `${value.toFixed(2)} s` : null;
}

// ------------------------------------------------------------------------------------------- the API

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.token) headers.authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    $("token-box").hidden = false;
    throw new ApiError("this server needs a bearer token: enter it above");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch (ignored) { /* not JSON: keep the status line */ }
    throw new ApiError(message);
  }
  return response;
}

async function apiJson(path) {
  return (await api(path)).json();
}

// Reads a text/event-stream body and calls onEvent(name, data) for each event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// ------------------------------------------------------------------------------------------- one turn

const OBSERVATION_LABELS = {
  summary: "summary",
  raw_passages: "raw passages (the squeezer failed)",
  search_failed: "search failed",
  feedback: "feedback",
};

function renderTurn(turn) {
  const costs = [
    turn.policy_tokens != null ? `${turn.policy_tokens} tokens` : null,
    turn.generation_s ? `generation ${seconds(turn.generation_s)}` : null,
    turn.retrieval_s ? `retrieval ${seconds(turn.retrieval_s)}` : null,
    turn.squeezer_s ? `squeezer ${seconds(turn.squeezer_s)}` : null,
    turn.observation_tokens ? `${turn.observation_tokens} observation tokens` : null,
  ].filter(Boolean);
  const node = el("div", { class: "turn", "data-turn": turn.number },
    el("div", { class: "turn-head" },
      el("span", {}, el("span", { class: "action" }, `turn ${turn.number + 1}: ${turn.action}`)),
      el("span", { class: "costs" }, costs.join(" · "))));
  for (const thought of turn.thinking) {
    node.append(el("div", { class: "thinking" }, el("span", { class: "label" }, "thinking"), thought));
  }
  if (turn.action === "invalid") {
    node.append(el("div", { class: "problem" }, `invalid turn: ${turn.error || ""}`));
    node.append(el("div", { class: "policy-text" }, turn.text));
  }
  turn.variants.forEach((variant, index) => node.append(renderVariant(variant, index)));
  if (turn.search_error) node.append(el("div", { class: "problem" }, `search failed: ${turn.search_error}`));
  if (turn.squeezer_error) node.append(el("div", { class: "problem" }, `squeezer failed: ${turn.squeezer_error}`));
  if (turn.observation) {
    const failed = turn.observation_kind === "search_failed" || turn.observation_kind === "raw_passages";
    node.append(el("div", { class: `observation${failed ? " failed" : ""}`, "data-kind": turn.observation_kind },
      el("span", { class: "label" }, OBSERVATION_LABELS[turn.observation_kind] || turn.observation_kind),
      turn.observation,
      turn.observation_chars ? el("span", { class: "badge" },
        `cut: the trace keeps ${turn.observation.length} of ${turn.observation_chars} characters`) : null));
  }
  if (turn.answer !== null && turn.answer !== undefined) {
    node.append(el("div", { class: "answer" }, el("span", { class: "label" }, "answer"), turn.answer));
  }
  return node;
}

function renderVariant(variant, index) {
  const node = el("div", { class: `variant${variant.searched ? "" : " not-searched"}` },
    el("span", { class: "label" }, `variant ${index + 1}`),
    el("span", { class: "query" }, variant.query),
    variant.searched ? null : el("span", { class: "badge" }, "not searched"));
  const list = el("ul", { class: "passages" });
  for (const hit of variant.hits) {
    const others = hit.found_by.filter((other) => other !== index).map((other) => other + 1);
    list.append(el("li", { class: `passage${hit.repeat ? " repeat" : ""}` },
      el("span", { class: "title" }, hit.title),
      el("span", { class: "text" }, hit.text == null ? "(text not in the trace)" : hit.text),
      others.length ? el("span", { class: "badge" },
        `${hit.repeat ? "duplicate: " : ""}also found by variant ${others.join(", ")}`) : null));
  }
  node.append(list);
  return node;
}

function episodeColumn(title, question) {
  return el("div", { class: "episode" },
    el("h2", {}, title),
    el("div", { class: "question" }, question),
    el("div", { class: "settings-line dim" }),
    el("div", { class: "turns" }),
    el("div", { class: "outcome" }));
}

function putTurn(column, turn) {
  const turns = column.querySelector(".turns");
  const fresh = renderTurn(turn);
  const old = turns.querySelector(`[data-turn="${turn.number}"]`);
  if (old) old.replaceWith(fresh);
  else turns.append(fresh);
}

function putOutcome(column, answer, footer) {
  const outcome = column.querySelector(".outcome");
  outcome.replaceChildren(
    answer === null || answer === undefined
      ? el("div", { class: "answer none" }, "no answer")
      : el("div", { class: "answer final" }, el("span", { class: "label" }, "final answer"), answer),
    el("div", { class: "footer" }, footer));
}

function putColumnError(column, message) {
  column.querySelector(".outcome").replaceChildren(el("div", { class: "error episode-error" }, message));
}

// ------------------------------------------------------------------------------------------- live view

function liveRequest(oneQuery) {
  const number = (id) => ($(id).value === "" ? null : Number($(id).value));
  return {
    question: $("question").value,
    max_variants: number("max-variants"),
    topk: number("topk"),
    max_turns: number("max-turns"),
    temperature: number("temperature"),
    squeezer: $("squeezer").checked,
    one_query: oneQuery,
  };
}

async function playLive(column, body) {
  column.querySelector(".outcome").replaceChildren(el("div", { class: "running" }, "running…"));
  try {
    const response = await api("/api/episodes", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    await readEvents(response, (name, data) => onLiveEvent(column, name, data));
  } catch (error) {
    putColumnError(column, error.message);
  }
}

function onLiveEvent(column, name, data) {
  if (name === "start") {
    const s = data.settings;
    column.querySelector(".settings-line").textContent =
      `${s.max_variants} variants · top-${s.topk} · ${s.max_turns} turns · T ${s.temperature} · squeezer ${data.squeezer}` +
      (s.one_query ? " · one query per search" : "");
  } else if (name === "turn") {
    putTurn(column, data.turn);
  } else if (name === "end") {
    const m = data.metrics;
    putOutcome(column, data.answer,
      `ended by ${data.termination} · ${m.turns} turns · ${m.searches} searches · ` +
      `${m.policy_tokens} policy tokens · ${m.response_tokens} response tokens · prompt ${data.prompt_tokens} tokens`);
  } else if (name === "error") {
    putColumnError(column, data.message);
  }
}

async function onAsk(event) {
  event.preventDefault();
  showPageError("");
  const question = $("question").value.trim();
  if (!question) return;
  const columns = $("live-episodes");
  const main = episodeColumn("all variants", question);
  main.dataset.kind = "multi";
  columns.replaceChildren(main);
  const plays = [playLive(main, liveRequest(false))];
  if ($("one-query").checked) {
    const single = episodeColumn("one query per search", question);
    single.dataset.kind = "one-query";
    columns.append(single);
    plays.push(playLive(single, liveRequest(true)));
  }
  $("ask-button").disabled = true;
  try {
    await Promise.all(plays);
  } finally {
    $("ask-button").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------- trace browser

function fillSelect(select, values, labels = values) {
  const previous = select.value;
  select.replaceChildren(...values.map((value, index) => el("option", { value }, labels[index])));
  if (values.includes(previous)) select.value = previous;
}

function currentRun() {
  return state.traces.find((run) => run.run === $("trace-run").value);
}

function traceParams(extra = {}) {
  return new URLSearchParams({
    run: $("trace-run").value, dataset: $("trace-dataset").value, method: $("trace-method").value, ...extra });
}

async function loadTraces() {
  state.traces = (await apiJson("/api/traces")).runs;
  fillSelect($("trace-run"), state.traces.map((run) => run.run),
    state.traces.map((run) => run.settings.model ? `${run.run} (${run.settings.model})` : run.run));
  onRunChange();
}

function onRunChange() {
  const run = currentRun();
  const datasets = run ? [...new Set(run.results.map((entry) => entry.dataset))] : [];
  fillSelect($("trace-dataset"), datasets);
  onDatasetChange();
}

function onDatasetChange() {
  const run = currentRun();
  const entries = run ? run.results.filter((entry) => entry.dataset === $("trace-dataset").value) : [];
  fillSelect($("trace-method"), entries.map((entry) => entry.method),
    entries.map((entry) => `${entry.method} (EM ${entry.em.toFixed(3)}, ${entry.questions} questions)`));
  loadQuestions();
}

async function loadQuestions() {
  const table = $("trace-questions").querySelector("tbody");
  if (!$("trace-method").value) {
    table.replaceChildren();
    $("trace-count").textContent = "no evaluation results in the trace folders";
    return;
  }
  const filters = {};
  if ($("trace-correct").value) filters.correct = $("trace-correct").value;
  if ($("trace-type").value) filters.type = $("trace-type").value;
  if ($("trace-text").value.trim()) filters.text = $("trace-text").value.trim();
  try {
    const data = await apiJson(`/api/traces/questions?${traceParams(filters)}`);
    const type = $("trace-type").value;
    fillSelect($("trace-type"), ["", ...data.types], ["all", ...data.types]);
    $("trace-type").value = data.types.includes(type) ? type : "";
    $("trace-count").textContent = `${data.rows.length} of ${data.total} questions`;
    table.replaceChildren(...data.rows.map(questionRow));
  } catch (error) {
    showPageError(error.message);
  }
}

function questionRow(row) {
  const em = Number(row.em || 0);
  const node = el("tr", { "data-id": row.id },
    el("td", {}, row.question), el("td", {}, row.type || "—"), el("td", {}, (row.golds || []).join(" | ")),
    el("td", {}, row.prediction == null ? "—" : row.prediction), el("td", { class: `em-${em > 0 ? 1 : 0}` }, em.toFixed(0)),
    el("td", {}, row.searches));
  node.addEventListener("click", () => openEpisode(row.id, node));
  return node;
}

async function openEpisode(id, rowNode) {
  for (const selected of document.querySelectorAll("#trace-questions tr.selected")) selected.classList.remove("selected");
  if (rowNode) rowNode.classList.add("selected");
  state.openId = id;
  try {
    const episode = await apiJson(`/api/traces/episode?${traceParams({ id })}`);
    fillSelect($("trace-compare"), ["", ...episode.other_methods], ["(none)", ...episode.other_methods]);
    const columns = [traceColumn(episode)];
    const other = $("trace-compare").value;
    if (other) columns.push(traceColumn(await apiJson(`/api/traces/episode?${traceParams({ id, method: other })}`)));
    $("trace-episodes").replaceChildren(...columns);
  } catch (error) {
    showPageError(error.message);
  }
}

function traceColumn(episode) {
  const record = episode.record;
  const column = episodeColumn(episode.method, record.question);
  column.dataset.kind = "trace";
  column.querySelector(".settings-line").textContent =
    `${episode.dataset} · ${record.type || "no type"} · gold: ${(record.golds || []).join(" | ")}`;
  for (const turn of episode.turns) putTurn(column, turn);
  putOutcome(column, record.prediction,
    `EM ${Number(record.em || 0).toFixed(0)} · F1 ${Number(record.f1 || 0).toFixed(2)} · ended by ${record.termination}` +
    ` · ${record.turns} turns · ${record.searches} searches · ${record.tokens} policy tokens`);
  return column;
}

// ------------------------------------------------------------------------------------------- start-up

function showView(name) {
  for (const view of ["live", "traces"]) {
    $(`view-${view}`).hidden = view !== name;
    $(`tab-${view}`).classList.toggle("active", view === name);
  }
  if (name === "traces" && !state.tracesLoaded) {
    state.tracesLoaded = true;
    loadTraces().catch((error) => showPageError(error.message));
  }
}

async function start() {
  showPageError("");
  const info = await apiJson("/api/info");
  state.info = info;
  $("token-box").hidden = true;
  const served = info.served || {};
  $("served").textContent = info.live
    ? `policy ${served.model} · retriever ${served.retriever} · squeezer ${info.squeezer}` : "traces only";
  $("tab-live").hidden = !info.live;
  $("tab-traces").hidden = !info.traces;
  if (info.settings) {
    $("max-variants").value = info.settings.max_variants;
    $("topk").value = info.settings.topk;
    $("max-turns").value = info.settings.max_turns;
    $("temperature").value = info.settings.temperature;
  }
  const wanted = location.hash === "#traces" && info.traces ? "traces" : info.live ? "live" : "traces";
  showView(wanted);
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", onAsk);
  $("tab-live").addEventListener("click", () => showView("live"));
  $("tab-traces").addEventListener("click", () => showView("traces"));
  $("trace-run").addEventListener("change", onRunChange);
  $("trace-dataset").addEventListener("change", onDatasetChange);
  $("trace-method").addEventListener("change", loadQuestions);
  $("trace-correct").addEventListener("change", loadQuestions);
  $("trace-type").addEventListener("change", loadQuestions);
  $("trace-text").addEventListener("input", loadQuestions);
  $("trace-compare").addEventListener("change", () => { if (state.openId) openEpisode(state.openId, null); });
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value;
    sessionStorage.setItem("expandsearch-token", state.token);
    start().catch((error) => showPageError(error.message));
  });
  start().catch((error) => showPageError(error.message));
});
