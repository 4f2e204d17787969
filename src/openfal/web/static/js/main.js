// The playground's shell: the key, the navigation and a hash router over the pages.

import {ApiError, call, key} from "./api.js";
import {h, replace} from "./dom.js";
import {keysPage, usagePage} from "./admin.js";
import {galleryPage} from "./gallery.js";
import {historyPage} from "./history.js";
import {endpointPage} from "./playground.js";

const main = document.getElementById("main");
const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const keyButton = document.getElementById("key-button");
let current = new AbortController();

// "#/models/fal-ai/flux/schnell?x=1" -> {path: ["models", "fal-ai", "flux", "schnell"], params}
function parseHash() {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  return {path: path.split("/").filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query)};
}

const PAGES = {
  models: (view, path, params, signal) => (path.length > 1
    ? endpointPage(view, path.slice(1).join("/"), signal)
    : galleryPage(view, params)),
  history: (view, path, params, signal) => historyPage(view, params, signal),
  keys: (view) => keysPage(view),
  usage: (view) => usagePage(view),
};

async function render() {
  current.abort();
  current = new AbortController();
  const {path, params} = parseHash();
  const name = PAGES[path[0]] ? path[0] : "models";
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const view = h("div", {class: "view"}, h("p", {class: "loading", role: "status"}, "Loading…"));
  replace(main, view);
  try {
    await PAGES[name](view, path, params, current.signal);
  } catch (error) {
    if (error.name !== "AbortError") replace(view, failure(error));
  }
}

function failure(error) {
  if (error instanceof ApiError && error.status === 401) {
    return h("section", {class: "notice"}, h("h1", {}, "This server needs an API key"),
      h("p", {}, key.get() ? "The key kept in this browser was refused." : "No key is set in this browser."),
      h("button", {type: "button", class: "primary", onclick: openKeyDialog}, "Enter an API key"));
  }
  return h("section", {class: "notice"}, h("h1", {}, "Something went wrong"),
    h("p", {class: "error"}, error.message));
}

/** Who the key is: ADMIN keys see the keys and usage pages. */
async function checkAccess() {
  let admin = false;
  let refused = false;
  try {
    await call("/api/keys");
    admin = true;
  } catch (error) {
    refused = error.status === 401;
  }
  for (const page of ["keys", "usage"]) document.querySelector(`nav a[data-page="${page}"]`).hidden = !admin;
  keyButton.textContent = key.get() ? "API key ✓" : "API key";
  keyButton.setAttribute("aria-label", key.get() ? "API key (set)" : "API key (not set)");
  return {admin, refused};
}

function openKeyDialog() {
  keyInput.value = key.get();
  dialog.showModal();
}

async function keyChanged() {
  dialog.close();
  await checkAccess();
  await render();
}

function wireKeyDialog() {
  keyButton.addEventListener("click", openKeyDialog);
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (keyInput.value.trim()) key.set(keyInput.value);
    else key.forget();
    keyChanged();
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    key.forget();
    keyChanged();
  });
  document.getElementById("key-cancel").addEventListener("click", () => dialog.close());
}

async function start() {
  wireKeyDialog();
  window.addEventListener("hashchange", render);
  const {refused} = await checkAccess();
  await render();
  if (refused) openKeyDialog();
}

start();
