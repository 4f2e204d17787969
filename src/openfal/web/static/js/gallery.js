// The served endpoints as cards, with a search box and categories.

import {listModels} from "./api.js";
import {h, replace, uid} from "./dom.js";

const RUNS_ON = {local: "runs here", upstream: "upstream", unavailable: "needs an upstream"};

function searchText(model) {
  const {display_name: name, description, category, tags} = model.metadata;
  return [model.endpoint_id, name, description, category, ...tags].join(" ").toLowerCase();
}

function card(model) {
  const {display_name: name, description, category} = model.metadata;
  const kind = model.runs_on.kind;
  return h("li", {},
    h("a", {class: `card runs-${kind}`, href: `#/models/${model.endpoint_id}`},
      h("h2", {}, name),
      h("p", {class: "endpoint-id"}, model.endpoint_id),
      description ? h("p", {class: "description"}, description) : null,
      h("p", {class: "badges"}, h("span", {class: "badge"}, category),
        h("span", {class: `badge run ${kind}`}, RUNS_ON[kind] || kind))));
}

/** Local endpoints first, then by id. */
function byPlacement(a, b) {
  const rank = (model) => (model.runs_on.kind === "local" ? 0 : 1);
  return rank(a) - rank(b) || a.endpoint_id.localeCompare(b.endpoint_id);
}

export async function galleryPage(view, params) {
  const models = (await listModels()).sort(byPlacement);
  const categories = [...new Set(models.map((model) => model.metadata.category))].sort();
  let category = params.get("category") || "";
  const searchId = uid("search");
  const search = h("input", {type: "search", id: searchId, value: params.get("q") || "",
    placeholder: "flux, speech, video…", autocomplete: "off"});
  const count = h("p", {class: "count", role: "status"});
  const list = h("ul", {class: "cards"});
  const chips = ["", ...categories].map((name) => h("button", {type: "button", class: "chip",
    "data-category": name, onclick: () => {
      category = name;
      update();
    }}, name || "all"));

  function update() {
    const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
    const shown = models.filter((model) => (!category || model.metadata.category === category)
      && words.every((word) => searchText(model).includes(word)));
    for (const chip of chips) chip.setAttribute("aria-pressed", String(chip.dataset.category === category));
    replace(list, shown.map(card));
    count.textContent = `${shown.length} of ${models.length} endpoints`;
    const query = new URLSearchParams();
    if (search.value) query.set("q", search.value);
    if (category) query.set("category", category);
    history.replaceState(null, "", `#/${query.size ? `?${query}` : ""}`);
  }
  search.addEventListener("input", update);

  replace(view,
    h("h1", {}, "Endpoints"),
    h("div", {class: "filters"},
      h("div", {class: "search"}, h("label", {for: searchId}, "Search"), search),
      h("div", {class: "chips", role: "group", "aria-label": "Category"}, chips)),
    count, list);
  update();
}
