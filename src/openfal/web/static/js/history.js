// Past requests: filtered by endpoint and status, opened, re-run or cancelled.

import {call, cancel, listModels, requestUrls} from "./api.js";
import {formatSeconds, formatTime, h, jsonBlock, replace, uid} from "./dom.js";
import {openWith} from "./playground.js";
import {renderResult} from "./result.js";

const STATUSES = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"];
const ACTIVE = new Set(["IN_QUEUE", "IN_PROGRESS"]);
const PAGE_SIZE = 25;

function labelled(text, control) {
  control.id = uid("filter");
  return h("div", {class: "filter"}, h("label", {for: control.id}, text), control);
}

function statusBadge(status) {
  return h("span", {class: `badge status ${status.toLowerCase()}`}, status.replace("_", " ").toLowerCase());
}

function detail(item, reload, notice = "") {
  const message = h("p", {class: "detail-status", role: "status"}, notice);
  const actions = h("div", {class: "actions"},
    h("button", {type: "button", class: "primary",
      onclick: () => openWith(item.endpoint_id, item.json_input || {}, true)}, "Re-run"),
    h("button", {type: "button", onclick: () => openWith(item.endpoint_id, item.json_input || {}, false)},
      "Edit in playground"),
    ACTIVE.has(item.status) ? h("button", {type: "button", onclick: async () => {
      const answer = await cancel(requestUrls(item.endpoint_id, item.request_id).cancel_url);
      message.textContent = answer.status === "CANCELLATION_REQUESTED" ? "Cancellation requested." : "It had already ended.";
      await reload(message.textContent);  // the request as it is now, with the same notice
    }}, "Cancel request") : null);
  const facts = [["Endpoint", item.endpoint_id], ["Status", item.status], ["Sent", formatTime(item.sent_at)],
    ["Started", formatTime(item.started_at)], ["Ended", formatTime(item.ended_at)],
    ["Duration", formatSeconds(item.duration)], ["HTTP status", item.status_code], ["Error", item.error]];
  return h("section", {class: "request-detail", "aria-labelledby": "detail-title"},
    h("h2", {id: "detail-title", tabindex: "-1"}, "Request ", h("code", {}, item.request_id)),
    h("dl", {class: "facts"}, facts.filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))])),
    actions, message,
    item.json_output !== null && item.json_output !== undefined
      ? renderResult(item.json_input, item.json_output)
      : h("details", {open: true}, h("summary", {}, "Input (JSON)"), jsonBlock(item.json_input, "Input JSON")));
}

export async function historyPage(view, params) {
  const models = await listModels();
  const endpoint = h("select", {}, h("option", {value: ""}, "All endpoints"),
    models.map((model) => h("option", {value: model.endpoint_id}, model.endpoint_id)));
  const status = h("select", {}, h("option", {value: ""}, "Any status"),
    STATUSES.map((name) => h("option", {value: name}, name.replace("_", " ").toLowerCase())));
  endpoint.value = params.get("endpoint_id") || "";
  status.value = params.get("status") || "";
  const rows = h("tbody", {});
  const summary = h("p", {class: "count", role: "status"});
  const more = h("button", {type: "button", hidden: true}, "Load more");
  const detailBox = h("div", {});
  let items = [];
  let cursor = null;

  async function load(append) {
    const query = new URLSearchParams({limit: String(PAGE_SIZE)});
    if (endpoint.value) query.set("endpoint_id", endpoint.value);
    if (status.value) query.set("status", status.value);
    if (append && cursor) query.set("cursor", cursor);
    const page = await call(`/v1/models/requests?${query}`);
    items = append ? [...items, ...page.items] : page.items;
    cursor = page.has_more ? page.next_cursor : null;
    more.hidden = !page.has_more;
    replace(rows, items.map(row));
    summary.textContent = items.length ? `${items.length} request${items.length === 1 ? "" : "s"}${page.has_more ? " so far" : ""}`
      : "No requests match.";
  }

  function row(item) {
    return h("tr", {},
      h("td", {}, formatTime(item.sent_at)),
      h("td", {class: "endpoint-id"}, item.endpoint_id),
      h("td", {}, statusBadge(item.status)),
      h("td", {}, formatSeconds(item.duration)),
      h("td", {}, h("button", {type: "button", class: "small", "aria-label": `Open request ${item.request_id}`,
        onclick: () => open(item)}, "Open")));
  }

  function open(item, notice = "") {
    replace(detailBox, detail(item, async (kept) => {
      await load(false);
      const fresh = items.find((candidate) => candidate.request_id === item.request_id);
      if (fresh) open(fresh, kept);
    }, notice));
    detailBox.querySelector("h2").focus();
  }

  function filter() {
    const query = new URLSearchParams();
    if (endpoint.value) query.set("endpoint_id", endpoint.value);
    if (status.value) query.set("status", status.value);
    history.replaceState(null, "", `#/history${query.size ? `?${query}` : ""}`);
    replace(detailBox);
    load(false);
  }
  endpoint.addEventListener("change", filter);
  status.addEventListener("change", filter);
  more.addEventListener("click", () => load(true));

  replace(view, h("h1", {}, "History"),
    h("div", {class: "filters"}, labelled("Endpoint", endpoint), labelled("Status", status),
      h("button", {type: "button", onclick: () => load(false)}, "Refresh")),
    summary,
    h("div", {class: "table-wrap"}, h("table", {class: "requests"},
      h("caption", {class: "visually-hidden"}, "Requests, newest first"),
      h("thead", {}, h("tr", {}, ["Sent", "Endpoint", "Status", "Duration", "Request"]
        .map((name) => h("th", {scope: "col"}, name)))),
      rows)),
    more, detailBox);
  await load(false);
}
