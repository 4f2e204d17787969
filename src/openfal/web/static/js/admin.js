// ADMIN pages: API keys (create, limit, revoke) and usage by key and endpoint.

import {call} from "./api.js";
import {formatSeconds, formatTime, h, replace, uid} from "./dom.js";

function field(text, control) {
  control.id = uid("admin");
  return h("div", {class: "filter"}, h("label", {for: control.id}, text), control);
}

function table(caption, headings, rows) {
  return h("div", {class: "table-wrap"}, h("table", {},
    h("caption", {class: "visually-hidden"}, caption),
    h("thead", {}, h("tr", {}, headings.map((name) => h("th", {scope: "col"}, name)))),
    h("tbody", {}, rows)));
}

function limitEditor(record, message) {
  const input = h("input", {type: "number", min: "1", step: "1", inputmode: "numeric",
    value: record.max_concurrency ? String(record.max_concurrency) : "",
    placeholder: "none", "aria-label": `Concurrency limit of ${record.name || record.id}`});
  const save = h("button", {type: "button", class: "small",
    "aria-label": `Save the limit of ${record.name || record.id}`, onclick: async () => {
      const value = input.value.trim() === "" ? null : Number(input.value);
      try {
        await call(`/api/keys/${record.id}`, {method: "PATCH", json: {max_concurrency: value}});
        message.textContent = `Limit of ${record.id} saved.`;
      } catch (error) {
        message.textContent = `Not saved: ${JSON.stringify(error.body && error.body.detail)}`;
      }
    }}, "Save");
  return h("div", {class: "inline"}, input, save);
}

/** Revoking takes two clicks: the button asks to be pressed again. */
function revokeButton(record, reload) {
  const button = h("button", {type: "button", class: "small danger",
    "aria-label": `Revoke ${record.name || record.id}`}, "Revoke");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Press again to revoke";
      return;
    }
    await call(`/api/keys/${record.id}`, {method: "DELETE"});
    await reload();
  });
  return button;
}

export async function keysPage(view) {
  const message = h("p", {class: "detail-status", role: "status"});
  const list = h("div", {});
  const created = h("div", {class: "new-key", "aria-live": "polite"});

  async function reload() {
    const {keys} = await call("/api/keys");
    replace(list, table("API keys", ["ID", "Name", "Scope", "Created", "State", "Concurrency limit", ""],
      keys.map((record) => h("tr", {},
        h("td", {}, h("code", {}, record.id)), h("td", {}, record.name), h("td", {}, record.scope),
        h("td", {}, formatTime(record.created_at)),
        h("td", {}, record.revoked_at ? `revoked ${formatTime(record.revoked_at)}` : "active"),
        h("td", {}, record.revoked_at ? "" : limitEditor(record, message)),
        h("td", {}, record.revoked_at ? "" : revokeButton(record, reload))))));
  }

  const name = h("input", {type: "text", maxlength: "200", autocomplete: "off"});
  const scope = h("select", {}, h("option", {value: "API"}, "API"), h("option", {value: "ADMIN"}, "ADMIN"));
  const limit = h("input", {type: "number", min: "1", step: "1", inputmode: "numeric", placeholder: "none"});
  const form = h("form", {class: "filters", novalidate: true, "aria-label": "New key", onsubmit: async (event) => {
    event.preventDefault();
    const body = {name: name.value, scope: scope.value,
      max_concurrency: limit.value.trim() === "" ? null : Number(limit.value)};
    try {
      const record = await call("/api/keys", {method: "POST", json: body});
      replace(created, h("p", {}, "New key, shown only this once: ", h("code", {class: "secret"}, record.key)));
      name.value = "";
      await reload();
    } catch (error) {
      replace(created, h("p", {class: "error"}, `Not created: ${JSON.stringify(error.body && error.body.detail)}`));
    }
  }}, field("Name", name), field("Scope", scope), field("Concurrency limit", limit),
  h("button", {type: "submit", class: "primary"}, "Create key"));

  await reload();
  replace(view, h("h1", {}, "API keys"), h("h2", {}, "New key"), form, created,
    h("h2", {}, "Keys"), message, list);
}

const PERIODS = [["Last 24 hours", 1], ["Last 7 days", 7], ["Last 30 days", 30]];

export async function usagePage(view) {
  const period = h("select", {}, PERIODS.map(([text, days]) => h("option", {value: String(days)}, text)));
  period.value = "7";
  const body = h("div", {});

  async function load() {
    const since = Date.now() / 1000 - Number(period.value) * 86400;
    const {usage} = await call(`/api/usage?since=${since}`);
    const total = (name) => usage.reduce((sum, row) => sum + row[name], 0);
    const cells = (row) => [row.requests, row.failed, formatSeconds(row.queue_seconds),
      formatSeconds(row.run_seconds), row.attempts, Number(row.billable_units.toFixed(3))]
      .map((value) => h("td", {class: "number"}, String(value)));
    replace(body, usage.length ? table("Usage by key and endpoint",
      ["Key", "Endpoint", "Requests", "Failed", "Queue time", "Run time", "Attempts", "Billable units"],
      [...usage.map((row) => h("tr", {}, h("td", {}, h("code", {}, row.key_id || "anonymous")),
        h("td", {class: "endpoint-id"}, row.endpoint_id), cells(row))),
      h("tr", {class: "total"}, h("th", {scope: "row", colspan: "2"}, "Total"),
        cells(Object.fromEntries(["requests", "failed", "queue_seconds", "run_seconds", "attempts",
          "billable_units"].map((name) => [name, total(name)]))))])
      : h("p", {}, "No finished requests in this period."));
  }
  period.addEventListener("change", load);
  await load();
  replace(view, h("h1", {}, "Usage"), h("div", {class: "filters"}, field("Period", period)), body);
}
