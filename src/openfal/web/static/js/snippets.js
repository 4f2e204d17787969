// Code that makes the same request against this server. None of it holds the key, and none
// can send it to the hosted platform: cURL names this server, the Python snippet refuses to
// run unless `openfal env` pointed fal_client here, and the JavaScript client goes through
// this server's proxy route for every call.

import {h, replace} from "./dom.js";

function indent(text, spaces) {
  return text.split("\n").map((line, index) => (index ? " ".repeat(spaces) + line : line)).join("\n");
}

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

/** A JSON value as a Python literal. */
function python(value, depth = 0) {
  const pad = "    ".repeat(depth + 1);
  const end = "    ".repeat(depth);
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string" || typeof value === "number") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => pad + python(item, depth + 1)).join(",\n")},\n${end}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([name, item]) => `${pad}${JSON.stringify(name)}: ${python(item, depth + 1)}`)
    .join(",\n")},\n${end}}`;
}

export function curl(origin, endpointId, input) {
  return [
    "# Queue it; then GET the response_url it answers with (same header) for the result.",
    `curl -X POST ${origin}/queue/${endpointId} \\`,
    '  -H "Authorization: Key $OPENFAL_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${shellQuote(JSON.stringify(input))}`,
  ].join("\n");
}

export function pythonClient(origin, endpointId, input) {
  return [
    "# fal_client speaks https only: start the server with `openfal serve --tls`, then",
    '#   eval "$(openfal env)"',
    "# sets FAL_KEY (your openfal key) together with the hosts that point fal_client here.",
    "import os",
    "",
    'if not os.environ.get("FAL_RUN_HOST"):',
    `    raise SystemExit('run eval "$(openfal env)" first: it points fal_client at ${origin}')`,
    "",
    "import fal_client",
    "",
    "result = fal_client.subscribe(",
    `    ${JSON.stringify(endpointId)},`,
    `    arguments=${python(input, 1)},`,
    "    with_logs=True,",
    "    on_queue_update=print,",
    ")",
    "print(result)",
  ].join("\n");
}

export function javascriptClient(origin, endpointId, input) {
  return [
    'import { fal } from "@fal-ai/client";',
    "",
    "// Every call goes to this server's proxy route, which serves it itself.",
    "fal.config({",
    "  credentials: process.env.OPENFAL_KEY,",
    `  proxyUrl: { url: "${origin}/api/fal/proxy", when: "always" },`,
    "});",
    "",
    `const { data, requestId } = await fal.subscribe(${JSON.stringify(endpointId)}, {`,
    `  input: ${indent(JSON.stringify(input, null, 2), 2)},`,
    "  logs: true,",
    "  onQueueUpdate: (update) => console.log(update.status),",
    "});",
    "console.log(requestId, data);",
  ].join("\n");
}

const LANGUAGES = [["cURL", curl], ["Python", pythonClient], ["JavaScript", javascriptClient]];

/** Buttons for each language over one code block, with a copy button. */
export function snippetPanel(endpointId, input) {
  const code = h("code", {});
  const block = h("pre", {class: "code", tabindex: "0", "aria-label": "Code snippet"}, code);
  const copied = h("span", {class: "copied", role: "status"});
  const buttons = LANGUAGES.map(([name, make]) => h("button", {type: "button", class: "tab",
    "aria-pressed": "false", onclick: () => show(name, make)}, name));
  function show(name, make) {
    replace(code, make(location.origin, endpointId, input));
    for (const button of buttons) button.setAttribute("aria-pressed", String(button.textContent === name));
    copied.textContent = "";
  }
  const copy = h("button", {type: "button", class: "small", onclick: async () => {
    try {
      await navigator.clipboard.writeText(code.textContent);
      copied.textContent = "Copied";
    } catch {
      copied.textContent = "Copying is not allowed here: select the code instead";
    }
  }}, "Copy");
  show(...LANGUAGES[0]);
  return h("section", {class: "snippets", "aria-label": "Code"},
    h("div", {class: "tabs", role: "group", "aria-label": "Language"}, buttons, copy, copied), block);
}
