// hftune label: rank a model's completions. Every text from the server goes on the page with textContent,
// never as HTML, so a completion holding <script> or <img onerror> shows as the text it is.
"use strict";

const NAME_KEY = "hftune-label-name"; // per browser session: a second tab or browser can be a second labeller
const GUIDELINES_KEY = "hftune-label-guidelines-closed"; // open the first time; closed once folded, this session
const $ = (id) => document.getElementById(id);
// `ranks` and `nodes` are indexed by slot (A = 0, the order the server sent them in); `order` is the order
// on screen (slots); `current` is the highlighted slot, the list's one tab stop.
const state = { name: sessionStorage.getItem(NAME_KEY), item: null, ranks: [], order: [], nodes: [], current: 0, busy: false };
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
  // Offer the names already in the labels file, so a returning labeller picks the same one. Only an offer:
  // without it the form works the same, so a failure here is not worth a message.
  api("/api/labellers").then((data) => {
    $("known-names").replaceChildren(...data.labellers.map((name) => Object.assign(el("option"), { value: name })));
  }).catch(() => {});
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
  // The server's normalised name (trimmed, whitespace collapsed) is the one the answers are saved under.
  if (page.labeller) {
    state.name = page.labeller;
    sessionStorage.setItem(NAME_KEY, page.labeller);
    $("who-name").textContent = page.labeller;
  }
  $("progress").textContent = `${page.done} / ${page.total} done`;
  for (const button of document.querySelectorAll(".undo")) button.disabled = !page.can_undo;
  state.item = page.item;
  $("task").hidden = !page.item;
  $("finished").hidden = Boolean(page.item);
  say("");
  if (page.item) showItem(page); else showEnd(page.end);
}

function showItem(page) {
  const item = page.item;
  showGuidelines(page.guidelines);
  $("second-pass").hidden = page.pass !== "skipped";
  // In the second pass every item has an answer, so the ones not final yet are the skips still to look at.
  const left = page.total - page.done;
  $("second-pass").textContent = `Second look at ${left} skipped item${left === 1 ? "" : "s"}: rank, flag or skip each once more.`;
  $("number").textContent = `${item.number} of ${page.total}`;
  $("task").dataset.item = item.id;
  const prompt = $("prompt");
  prompt.replaceChildren();
  for (const turn of item.prompt) {
    const node = el("div", "turn " + turn.role);
    node.append(el("div", "role", turn.role), el("div", "content", turn.content));
    prompt.append(node);
  }
  $("hint").hidden = !item.hint;
  $("hint-text").textContent = item.hint || "";
  state.ranks = item.completions.map(() => null);
  state.order = item.completions.map((_, slot) => slot);
  state.nodes = item.completions.map(completionNode);
  state.current = 0;
  $("completions").replaceChildren(...state.nodes);
  refresh();
  // A new prompt starts at the top of the page (the prompt first), with the focus on the first completion.
  window.scrollTo(0, 0);
  state.nodes[0].focus({ preventScroll: true });
}

function showGuidelines(text) {
  const box = $("guidelines");
  box.hidden = !text;
  $("guidelines-text").textContent = text || "";
  box.open = sessionStorage.getItem(GUIDELINES_KEY) === null;
}

function showEnd(end) {
  $("end-counts").textContent =
    `${end.ranked} ranked, ${end.skipped} skipped, ${end.flagged} flagged: ${end.pairs} preference pairs for training.`;
  // One <pre> a command, to copy as it stands (a click selects all of it: label.css).
  $("end-next").replaceChildren(...end.next.map((command) => {
    const pre = el("pre", "command");
    pre.append(el("code", null, command));
    return pre;
  }));
  $("finished-heading").focus();
}

const slotName = (slot) => state.item.completions[slot].slot;

// One completion: its letter, a rank button for every rank (touch and mouse), its text. The keyboard uses
// the number keys on the focused completion, so the buttons are not tab stops: the list is one.
function completionNode(completion, slot) {
  const k = state.item.completions.length;
  const li = el("li", "completion");
  li.tabIndex = -1;
  li.draggable = true;
  li.dataset.slot = completion.slot;
  const buttons = el("span", "rank-buttons");
  buttons.setAttribute("role", "group");
  buttons.setAttribute("aria-label", `Rank of completion ${completion.slot}`);
  for (let rank = 1; rank <= k; rank++) {
    const button = el("button", "rank-button", String(rank));
    button.type = "button";
    button.tabIndex = -1;
    button.addEventListener("click", () => {
      setRank(slot, state.ranks[slot] === rank ? null : rank); // the active number again clears it
      focusCurrent(true);
    });
    buttons.append(button);
  }
  const head = el("div", "head");
  head.append(el("span", "slot", completion.slot), buttons, el("span", "status"));
  if (completion.truncated) head.append(el("span", "cut", "cut off at the token limit"));
  li.append(head, el("div", "text", completion.text));
  li.addEventListener("dragstart", (event) => event.dataTransfer.setData("text/plain", String(slot)));
  li.addEventListener("dragover", (event) => event.preventDefault());
  li.addEventListener("drop", (event) => {
    event.preventDefault();
    drop(Number(event.dataTransfer.getData("text/plain")), slot);
  });
  return li;
}

function describe(slot) {
  const rank = state.ranks[slot];
  if (rank === null) return "not ranked";
  const tied = state.order.filter((s) => s !== slot && state.ranks[s] === rank).map(slotName);
  return `rank ${rank}` + (tied.length ? `, tied with ${tied.join(" and ")}` : "");
}

// Put the state on screen: each completion's rank, name and place in the list, and the one tab stop.
function refresh() {
  const list = $("completions");
  state.order.forEach((slot, position) => {
    const li = state.nodes[slot];
    const status = describe(slot);
    const truncated = state.item.completions[slot].truncated ? ", cut off at the token limit" : "";
    li.setAttribute("aria-label", `Completion ${slotName(slot)}, ${status}${truncated}`);
    li.querySelector(".status").textContent = status;
    li.classList.toggle("ranked", state.ranks[slot] !== null);
    li.classList.toggle("current", slot === state.current);
    li.tabIndex = slot === state.current ? 0 : -1;
    li.querySelectorAll(".rank-button").forEach((button, j) => {
      button.setAttribute("aria-pressed", String(state.ranks[slot] === j + 1));
    });
    if (list.children[position] !== li) list.insertBefore(li, list.children[position] || null);
  });
}

// The highlighted completion is the focused element, scrolled into view when `scroll`.
function focusCurrent(scroll) {
  const li = state.nodes[state.current];
  li.focus({ preventScroll: true });
  if (scroll) li.scrollIntoView({ block: "nearest" });
}

// A rank typed or clicked: the list stays sorted by rank (unranked last; ties and the unranked keep their
// order), and the highlight stays with the completion wherever it moves.
function setRank(slot, rank) {
  state.ranks[slot] = rank;
  const key = (s) => (state.ranks[s] === null ? Infinity : state.ranks[s]);
  state.order.sort((a, b) => key(a) - key(b)); // a stable sort
  state.current = slot;
  refresh();
  say("");
}

// After a typed rank the highlight moves on to the next completion still unranked (below, then from the
// top), or stays where it is once all are ranked.
function nextUnranked(slot) {
  const at = state.order.indexOf(slot);
  const after = [...state.order.slice(at + 1), ...state.order.slice(0, at)];
  return after.find((s) => state.ranks[s] === null) ?? slot;
}

// Dragging: `from` goes to `onto`'s place (below it when dragged down, above it when dragged up), but
// never between completions that are tied, which would break their tie: then below the tied ones. The ranks
// then follow the order, top = 1, each tie keeping one shared rank and the dragged completion one of its own.
function drop(from, onto) {
  if (from === onto || !(from in state.ranks)) return;
  const before = [...state.ranks];
  const goingDown = state.order.indexOf(from) < state.order.indexOf(onto);
  const order = state.order.filter((s) => s !== from);
  let at = order.indexOf(onto) + (goingDown ? 1 : 0);
  const tiedAt = (i) => before[order[i - 1]] !== null && before[order[i - 1]] === before[order[i]];
  while (at > 0 && at < order.length && tiedAt(at)) at++;
  order.splice(at, 0, from);
  let rank = 0;
  order.forEach((slot, i) => {
    const prev = order[i - 1];
    const tied = i > 0 && slot !== from && prev !== from && before[slot] !== null && before[slot] === before[prev];
    if (!tied) rank++;
    state.ranks[slot] = rank;
  });
  state.order = order;
  state.current = from;
  refresh();
  focusCurrent(true);
  say("");
}

function moveHighlight(step) {
  const at = state.order.indexOf(state.current);
  state.current = state.order[Math.max(0, Math.min(at + step, state.order.length - 1))];
  refresh();
  focusCurrent(true);
}

async function send(action, extra) {
  if (state.busy || !state.item) return;
  const body = { labeller: state.name, item: state.item.id, action, ...extra };
  if (action === "rank") {
    if (state.ranks.some((r) => r === null)) { say("rank every completion first (1 = best; ties allowed)"); return; }
    // The server takes ranks in the order the slots were first shown (A, B, C, ...), whatever the list's order.
    body.ranks = [...state.ranks];
  }
  await write(async () => {
    const page = await api("/api/submit", body);
    // Move on only once the server says this answer is on disk; otherwise keep it on screen and say why.
    if (page.saved !== true) throw new Error(page.error || "not saved");
    return page;
  });
}

// Undo retracts the labeller's last answer (the server appends a retraction; nothing is rewritten) and
// serves that item again.
async function undo() {
  await write(async () => {
    const page = await api("/api/undo", { labeller: state.name });
    if (!page.undone) throw new Error(page.error || "nothing was undone");
    return page;
  }, (page) => (page.item ? `Your last answer is undone: prompt ${page.item.number} is back.` : ""));
}

// One write at a time; on success the page the server answers with, else the item stays and the reason shows.
async function write(request, message) {
  if (state.busy) return;
  state.busy = true;
  try {
    const page = await request();
    show(page);
    if (message) say(message(page));
  } catch (err) {
    say(err.message);
  } finally {
    state.busy = false;
  }
}

// The item's keys work only while a completion has the focus: on a button Enter and Space press that
// button, in an input they type, and arrow keys elsewhere scroll the page as usual.
$("completions").addEventListener("keydown", (event) => {
  if (!state.item || !event.target.classList.contains("completion") || event.altKey || event.metaKey) return;
  const key = event.key.toLowerCase();
  if (event.ctrlKey) {
    if (key !== "z") return;
    undo();
  } else if (/^[1-9]$/.test(key)) {
    const rank = Number(key);
    const k = state.item.completions.length;
    if (rank > k) { say(`ranks go from 1 (best) to ${k}`); return; }
    setRank(state.current, rank);
    state.current = nextUnranked(state.current);
    refresh();
    focusCurrent(true);
  } else if (key === "0" || key === "backspace" || key === "delete") { setRank(state.current, null); focusCurrent(true); }
  else if (key === "arrowdown" || key === "j") moveHighlight(1);
  else if (key === "arrowup" || key === "k") moveHighlight(-1);
  else if (key === "home") moveHighlight(-state.order.length);
  else if (key === "end") moveHighlight(state.order.length);
  else if (key === "enter") send("rank");
  else if (key === "s") send("skip");
  else if (key === "u") send("flag", { flag: "unsafe" });
  else if (key === "b") send("flag", { flag: "broken" });
  else if (key === "z") undo();
  else return;
  event.preventDefault();
});

// Focus moved onto a completion (a click, a screen reader): it becomes the highlighted one, the tab stop.
$("completions").addEventListener("focusin", (event) => {
  const li = event.target.closest(".completion");
  if (!li || !state.item) return;
  const slot = state.nodes.indexOf(li);
  if (slot !== state.current) { state.current = slot; refresh(); }
});

$("guidelines").addEventListener("toggle", () => {
  if ($("guidelines").hidden) return;
  if ($("guidelines").open) sessionStorage.removeItem(GUIDELINES_KEY);
  else sessionStorage.setItem(GUIDELINES_KEY, "1");
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
for (const button of document.querySelectorAll(".undo")) button.addEventListener("click", undo);

if (state.name) start(); else showLogin();
