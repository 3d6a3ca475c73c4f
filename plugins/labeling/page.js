// The labeling page (server.py serves it): asks /api/next for a query, shows it, posts the label to /api/label.
// Every text from the run is put in with textContent, never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let query = null;      // the query shown
let order = [];        // ranking mode: positions, best first (picked ones, then the rest)
let picked = 0;        // ranking mode: how many of `order` the annotator has placed
let busy = false;
let pollTimer = null;

function annotator() { return $("annotator").value.trim(); }

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

async function next() {
  clearTimeout(pollTimer);
  if (!annotator()) {
    $("query").hidden = true;
    $("done").hidden = true;
    $("hint").textContent = "Type your name above to start labeling.";
    return;
  }
  $("hint").textContent = "";
  let reply;
  try {
    const response = await fetch(`/api/next?token=${encodeURIComponent(token)}&annotator=${encodeURIComponent(annotator())}`);
    reply = await response.json();
    if (!response.ok) { status(reply.error || response.statusText, true); return; }
  } catch (err) {
    status("The run's labeling server does not answer (has the run ended?). Retrying...", true);
    pollTimer = setTimeout(next, 3000);
    return;
  }
  $("title").textContent = reply.title || "rexlab labeling";
  $("question").textContent = reply.question || "";
  const p = reply.progress;
  $("progress").textContent = `${p.labeled} / ${p.needed} labeled · yours: ${p.mine}`;
  if (!reply.query) {
    query = null;
    $("query").hidden = true;
    $("done").hidden = false;
    pollTimer = setTimeout(next, 1500);
    return;
  }
  if (query && query.id === reply.query.id) return;
  show(reply.query);
}

function show(q) {
  query = q;
  order = [...Array(q.size).keys()];
  picked = 0;
  $("done").hidden = true;
  $("query").hidden = false;
  $("prompt-box").hidden = q.prompt === undefined;
  $("prompt").textContent = q.prompt || "";
  $("correction-box").hidden = !q.corrections;
  $("correction").value = "";
  const ranking = q.size > 2;
  $("pair-buttons").hidden = ranking;
  $("rank-buttons").hidden = !ranking;
  $("items").className = ranking ? "ranking" : "pair";
  $("hint").textContent = ranking
    ? `Click the responses (or press their numbers) from best to worst, or drag them into order; then submit.`
    : "";
  draw();
}

function draw() {
  const list = $("items");
  clear(list);
  const ranking = query.size > 2;
  const shown = ranking ? order : [...Array(query.size).keys()];
  shown.forEach((pos, slot) => {
    const li = document.createElement("li");
    li.id = `item-${pos}`;
    li.dataset.pos = pos;
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = ranking ? `Response ${pos + 1}` : (pos === 0 ? "Left" : "Right");
    li.appendChild(tag);
    if (ranking && slot < picked) {
      li.classList.add("picked");
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = `#${slot + 1}`;
      li.appendChild(rank);
    }
    if (query.clips) {
      const img = document.createElement("img");
      img.src = query.clips[pos];
      img.alt = `${tag.textContent} clip`;
      li.appendChild(img);
    } else {
      const text = document.createElement("pre");
      text.textContent = query.texts[pos];
      li.appendChild(text);
    }
    if (ranking) {
      li.draggable = true;
      li.addEventListener("click", () => pick(pos));
      li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(pos)));
      li.addEventListener("dragover", (e) => e.preventDefault());
      li.addEventListener("drop", (e) => { e.preventDefault(); move(Number(e.dataTransfer.getData("text/plain")), pos); });
    }
    list.appendChild(li);
  });
}

function pick(pos) {  // ranking: `pos` takes the next rank
  const at = order.indexOf(pos);
  if (at < picked) return;
  order.splice(at, 1);
  order.splice(picked, 0, pos);
  picked += 1;
  if (picked === order.length - 1) picked = order.length;  // the last one is implied
  draw();
}

function move(from, to) {  // ranking, by drag: put `from` where `to` is; the order shown becomes the ranking
  if (from === to) return;
  const slot = order.indexOf(to);  // `from` takes `to`'s place; those between shift by one
  order.splice(order.indexOf(from), 1);
  order.splice(slot, 0, from);
  picked = order.length;
  draw();
}

async function send(body) {
  if (!query || busy) return;
  if (!annotator()) { status("Type your name first.", true); return; }
  const correction = $("correction").value.trim();
  if (correction && query.texts) body.correction = correction;
  busy = true;
  try {
    const response = await fetch("/api/label", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({token, annotator: annotator(), query: query.id, ...body}),
    });
    const reply = await response.json();
    if (response.status === 409) { status("That one has its labels already; here is the next."); query = null; }
    else if (!response.ok) { status(reply.error || response.statusText, true); return; }
    else { status("Saved."); }
    query = null;
  } catch (err) {
    status("Not saved: the labeling server does not answer. Try again.", true);
    return;
  } finally {
    busy = false;
  }
  next();
}

function choose(choice) { if (query && query.size === 2) send({choice}); }

function submitRanking() {
  if (!query || query.size <= 2) return;
  if (picked < order.length) { status(`Place all ${order.length} responses first (${picked} placed).`, true); return; }
  send({ranking: order});
}

$("left").addEventListener("click", () => choose("left"));
$("right").addEventListener("click", () => choose("right"));
$("equal").addEventListener("click", () => choose("equal"));
$("skip").addEventListener("click", () => choose("skip"));
$("submit").addEventListener("click", submitRanking);
$("clear").addEventListener("click", () => { if (query) { picked = 0; draw(); } });
$("annotator").addEventListener("change", () => {
  localStorage.setItem("rexlab-annotator", annotator());
  query = null;
  next();
});

document.addEventListener("keydown", (e) => {
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
  if (!query || e.ctrlKey || e.metaKey || e.altKey) return;
  if (query.size === 2) {
    const choice = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right", "3": "equal", "0": "skip"}[e.key];
    if (choice) { e.preventDefault(); choose(choice); }
    return;
  }
  const number = Number(e.key);
  if (Number.isInteger(number) && number >= 1 && number <= query.size) { pick(number - 1); }
  else if (e.key === "Backspace") { picked = 0; draw(); }
  else if (e.key === "Enter") { submitRanking(); }
});

$("annotator").value = localStorage.getItem("rexlab-annotator") || "";
next();
