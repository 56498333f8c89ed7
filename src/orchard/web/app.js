// The fruit-recognition page: one photo -> POST /predict -> bars for the classes, thumbnails for the neighbours.
"use strict";

const TOP_K = 5;
const SIMILAR = 6;
const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("orchard-key") || "", maxBytes: 0, busy: false };

function takeKeyFromFragment() {
  const match = location.hash.match(/(?:^#|&)key=([^&]+)/);
  if (!match) return;
  state.key = decodeURIComponent(match[1]);
  sessionStorage.setItem("orchard-key", state.key);
  history.replaceState(null, "", location.pathname + location.search); // the key leaves the address bar
}

function headers() {
  return state.key ? { "X-API-Key": state.key } : {};
}

function say(text) {
  const box = $("message");
  box.textContent = text;
  box.hidden = !text;
}

function megabytes(bytes) {
  return (bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0) + " MB";
}

const REASONS = {
  401: () => { askForKey("That access key was not accepted. Check it and try again."); return ""; },
  408: () => "The upload took too long. Check your connection and try again.",
  413: () => `This photo is too large. Choose one under ${megabytes(state.maxBytes)}.`,
  415: () => "That file is not a photo. Choose a JPEG, HEIC, PNG or WebP image.",
  422: () => "This photo could not be read. It may be damaged or in an unusual format; try another one.",
};

async function explain(response) {
  if (response.status === 429) {
    const wait = response.headers.get("Retry-After") || "a few";
    return `Too many photos in a short time. Wait ${wait} seconds and try again.`;
  }
  const reason = REASONS[response.status];
  return reason ? reason() : `The service could not answer (error ${response.status}). Try again later.`;
}

function askForKey(text) {
  $("key-form").hidden = false;
  say(text);
  $("key").focus();
}

async function loadHealth() {
  let health;
  try {
    const response = await fetch("health");
    health = await response.json();
  } catch {
    say("Cannot reach the service. Check your connection and reload the page.");
    return;
  }
  state.maxBytes = health.max_upload_bytes;
  if (!health.meaningful_weights) {
    const banner = $("banner");
    banner.textContent = "Demo model: it was built with random weights, so its answers are not meaningful.";
    banner.hidden = false;
  }
  if (health.api_key_required && !state.key) askForKey("");
}

function looksLikeImage(file) {
  return file.type.startsWith("image/") || /\.(heic|heif)$/i.test(file.name);
}

function asImage(file) {
  // some browsers give HEIC files no type; declare it so the service takes the part as an image
  return file.type ? file : new File([file], file.name, { type: "image/heic" });
}

function showPreview(file) {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  preview.onerror = () => { preview.hidden = true; $("drop-hint").textContent = "(no preview for this format)"; };
  $("drop-hint").hidden = true;
}

function bar(label, probability) {
  const item = document.createElement("li");
  const fill = document.createElement("div");
  fill.className = "fill";
  fill.style.width = `${(probability * 100).toFixed(1)}%`;
  const name = document.createElement("span");
  name.className = "label";
  name.textContent = label;
  const value = document.createElement("span");
  value.className = "p";
  value.textContent = `${(probability * 100).toFixed(1)} %`;
  item.append(fill, name, value);
  return item;
}

async function thumbnail(neighbour) {
  const item = document.createElement("li");
  const image = document.createElement("img");
  image.alt = neighbour.label;
  const caption = document.createElement("span");
  caption.textContent = neighbour.label;
  item.append(image, caption);
  try {
    const response = await fetch(`thumbnails/${neighbour.id}`, { headers: headers() });
    if (response.ok) image.src = URL.createObjectURL(await response.blob());
  } catch {
    caption.textContent = `${neighbour.label} (image not loaded)`;
  }
  return item;
}

async function identify(file) {
  if (state.busy) return;
  say("");
  $("result").hidden = true;
  delete document.body.dataset.state;
  if (!looksLikeImage(file)) {
    say("That file is not a photo. Choose a JPEG, HEIC, PNG or WebP image.");
    return;
  }
  if (state.maxBytes && file.size > state.maxBytes) {
    say(`This photo is too large (${megabytes(file.size)}). Choose one under ${megabytes(state.maxBytes)}.`);
    return;
  }
  showPreview(file);
  const form = new FormData();
  form.append("file", asImage(file), file.name || "photo");
  state.busy = true;
  document.body.setAttribute("aria-busy", "true");
  const started = performance.now();
  let response;
  try {
    response = await fetch(`predict?top_k=${TOP_K}&similar=${SIMILAR}`,
                           { method: "POST", body: form, headers: headers() });
  } catch {
    say("Network error: the photo could not be sent. Check your connection and try again.");
    return;
  } finally {
    state.busy = false;
    document.body.removeAttribute("aria-busy");
  }
  if (!response.ok) {
    const text = await explain(response);
    if (text) say(text);
    $("result").hidden = true;
    return;
  }
  const answer = await response.json();
  const elapsed = performance.now() - started;
  show(answer, elapsed);
}

async function show(answer, elapsed) {
  const best = answer.predictions[0];
  $("answer").textContent = best ? best.label : "no answer";
  $("timing").textContent = `answered in ${Math.round(elapsed)} ms`;
  $("predictions").replaceChildren(...answer.predictions.map((row) => bar(row.label, row.probability)));
  $("result").hidden = false;
  document.body.dataset.elapsedMs = String(Math.round(elapsed));
  const tiles = await Promise.all(answer.similar.map(thumbnail));
  $("similar").replaceChildren(...tiles);
  document.body.dataset.state = "done";
}

function wire() {
  for (const id of ["camera", "file"]) {
    $(id).addEventListener("change", (event) => {
      const [file] = event.target.files;
      event.target.value = "";
      if (file) identify(file);
    });
  }
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) identify(file);
  });
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    const response = await fetch("classes", { headers: headers() }).catch(() => null);
    if (!response) { say("Network error: check your connection and try again."); return; }
    if (!response.ok) { askForKey("That access key was not accepted. Check it and try again."); return; }
    sessionStorage.setItem("orchard-key", state.key);
    $("key-form").hidden = true;
    say("");
  });
}

takeKeyFromFragment();
wire();
loadHealth();
