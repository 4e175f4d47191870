// hftune label: rank a model's completions. Every text from the server goes on the page with textContent,
// never as HTML, so a completion holding <script> or <img onerror> shows as the text it is.
"use strict";

const NAME_KEY = "hftune-label-name"; // per browser session: a second tab or browser can be a second labeller
const $ = (id) => document.getElementById(id);
const state = { name: sessionStorage.getItem(NAME_KEY), item: null, ranks: [], focus: 0, busy: false };
// This run's write token, written into the page by the server: every write sends it back in a header, which
// a page of another origin can neither read nor send (app.py, guard.py).
const WRITE_TOKEN = document.querySelector('meta[name="hftune-write-token"]').content;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Hftune-Token": WRITE_TOKEN },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function say(text) { $("message").textContent = text; }

function showLogin() {
  $("login").hidden = false; $("task").hidden = true; $("finished").hidden = true; $("who").hidden = true;
  $("name").value = state.name || "";
  $("name").focus();
}

async function start() {
  $("login").hidden = true;
  $("who").hidden = false;
  $("who-name").textContent = state.name;
  try {
    show(await api("/api/next?labeller=" + encodeURIComponent(state.name)));
  } catch (err) {
    say(err.message);
  }
}

function show(page) {
  $("progress").textContent = `${page.done} / ${page.total} done`;
  state.item = page.item;
  $("task").hidden = !page.item;
  $("finished").hidden = Boolean(page.item);
  if (!page.item) return;
  $("number").textContent = `${page.item.number} of ${page.total}`;
  $("task").dataset.item = page.item.id;
  const prompt = $("prompt");
  prompt.replaceChildren();
  for (const turn of page.item.prompt) {
    const node = el("div", "turn " + turn.role);
    node.append(el("div", "role", turn.role), el("div", "content", turn.content));
    prompt.append(node);
  }
  state.ranks = page.item.completions.map(() => null);
  state.focus = 0;
  render();
  say("");
}

function render() {
  const list = $("completions");
  list.replaceChildren();
  state.item.completions.forEach((completion, j) => {
    const li = el("li", "completion" + (j === state.focus ? " focused" : ""));
    li.draggable = true;
    li.dataset.slot = completion.slot;
    li.append(
      el("span", "slot", completion.slot),
      el("span", "rank", state.ranks[j] === null ? "–" : String(state.ranks[j])),
      el("div", "text", completion.text),
    );
    li.addEventListener("click", () => { state.focus = j; render(); });
    li.addEventListener("dragstart", (event) => event.dataTransfer.setData("text/plain", String(j)));
    li.addEventListener("dragover", (event) => event.preventDefault());
    li.addEventListener("drop", (event) => {
      event.preventDefault();
      move(Number(event.dataTransfer.getData("text/plain")), j);
    });
    list.append(li);
  });
}

// Dragging puts the completions in order, best on top: every rank then follows from the position.
function move(from, to) {
  const [moved] = state.item.completions.splice(from, 1);
  state.item.completions.splice(to, 0, moved);
  state.ranks = state.item.completions.map((_, j) => j + 1);
  state.focus = to;
  render();
}

function setRank(rank) {
  const k = state.item.completions.length;
  if (rank > k) { say(`ranks go from 1 (best) to ${k}`); return; }
  state.ranks[state.focus] = rank;
  state.focus = Math.min(state.focus + 1, k - 1);
  render();
  say("");
}

async function send(action, extra) {
  if (state.busy || !state.item) return;
  const body = { labeller: state.name, item: state.item.id, action, ...extra };
  if (action === "rank") {
    if (state.ranks.some((r) => r === null)) { say("rank every completion first (1 = best; ties allowed)"); return; }
    // The server takes ranks in the order the slots were first shown (A, B, C, ...), whatever the dragging did.
    body.ranks = state.item.completions.map(() => 0);
    state.item.completions.forEach((c, j) => { body.ranks[c.slot.charCodeAt(0) - 65] = state.ranks[j]; });
  }
  state.busy = true;
  try {
    const page = await api("/api/submit", body);
    // Move on only once the server says this answer is on disk; otherwise keep it on screen and say why.
    if (page.saved !== true) throw new Error(page.error || "not saved");
    show(page);
  } catch (err) {
    say(err.message);
  } finally {
    state.busy = false;
  }
}

document.addEventListener("keydown", (event) => {
  if (!state.item || $("task").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.target instanceof HTMLInputElement) return;
  const key = event.key.toLowerCase();
  const k = state.item.completions.length;
  if (/^[1-9]$/.test(key)) setRank(Number(key));
  else if (key === "0" || key === "backspace") { state.ranks[state.focus] = null; render(); }
  else if (key === "arrowdown" || key === "j") { state.focus = Math.min(state.focus + 1, k - 1); render(); }
  else if (key === "arrowup" || key === "k") { state.focus = Math.max(state.focus - 1, 0); render(); }
  else if (key === "enter") send("rank");
  else if (key === "s") send("skip");
  else if (key === "u") send("flag", { flag: "unsafe" });
  else if (key === "b") send("flag", { flag: "broken" });
  else return;
  event.preventDefault();
});

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  state.name = name;
  sessionStorage.setItem(NAME_KEY, name);
  start();
});
$("change-name").addEventListener("click", () => { sessionStorage.removeItem(NAME_KEY); state.name = null; showLogin(); });
$("submit").addEventListener("click", () => send("rank"));
$("skip").addEventListener("click", () => send("skip"));
$("flag-unsafe").addEventListener("click", () => send("flag", { flag: "unsafe" }));
$("flag-broken").addEventListener("click", () => send("flag", { flag: "broken" }));

if (state.name) start(); else showLogin();
