// One endpoint: its form, a run through the queue followed live (position, progress, logs,
// previews), the result, and code for the same request.

import {ApiError, call, cancel, endpointDocument, statusEvents, submit} from "./api.js";
import {h, replace} from "./dom.js";
import {buildForm} from "./form.js";
import {renderMedia, renderResult} from "./result.js";
import {snippetPanel} from "./snippets.js";

const RECONNECTS = 5;
let handoff = null;

/** Open an endpoint's page with `input` in its form, and run it at once when `run`. */
export function openWith(endpointId, input, run) {
  handoff = {endpointId, input, run};
  location.hash = `#/models/${endpointId}`;
}

function takeHandoff(endpointId) {
  const taken = handoff && handoff.endpointId === endpointId ? handoff : null;
  handoff = null;
  return taken;
}

function header(endpointId, model) {
  const metadata = model ? model.metadata : {display_name: endpointId, category: "", description: ""};
  const kind = model ? model.runs_on.kind : "";
  return h("header", {class: "endpoint-header"},
    h("p", {class: "crumbs"}, h("a", {href: "#/"}, "Models"), " / ", metadata.category),
    h("h1", {}, metadata.display_name),
    h("p", {class: "endpoint-id"}, endpointId),
    kind === "unavailable" ? h("p", {class: "warning"},
      "No upstream is configured for this endpoint: a run is refused after its input is checked.") : null,
    metadata.description ? h("p", {class: "description"}, metadata.description) : null);
}

/** The live part of a run: status line, progress bar, logs and previews. */
function runPanel() {
  const status = h("p", {class: "run-status", role: "status"}, "Fill in the form and press Run.");
  const progress = h("progress", {max: "1", value: "0", hidden: true, "aria-label": "Progress"});
  const logs = h("pre", {class: "logs", tabindex: "0", "aria-label": "Logs"});
  const logsBox = h("details", {class: "logs-box", hidden: true}, h("summary", {}, "Logs"), logs);
  const preview = h("div", {class: "preview"});
  const result = h("div", {class: "result-box"});
  return {
    node: h("div", {}, status, progress, logsBox, preview, result),
    status, progress, logs, logsBox, preview, result,
    reset() {
      replace(logs);
      replace(preview);
      replace(result);
      logsBox.hidden = true;
      progress.hidden = true;
    },
  };
}

function describeStatus(update) {
  if (update.status === "IN_QUEUE") return `In queue (position ${update.queue_position ?? 0})`;
  if (update.status === "IN_PROGRESS") {
    const step = update.progress;
    return step ? `Running: step ${step.step} of ${step.total}${step.message ? ` (${step.message})` : ""}` : "Running";
  }
  return update.error ? `Failed: ${update.error}` : "Completed";
}

function showUpdate(panel, update) {
  panel.status.textContent = describeStatus(update);
  if (update.progress && update.progress.total) {
    panel.progress.hidden = false;
    panel.progress.max = update.progress.total;
    panel.progress.value = update.progress.step;
  }
  for (const line of update.logs || []) {
    panel.logsBox.hidden = false;
    panel.logsBox.open = true;
    const time = line.timestamp ? new Date(line.timestamp).toLocaleTimeString() : "";
    panel.logs.append(`${time} ${line.message}\n`);
    panel.logs.scrollTop = panel.logs.scrollHeight;
  }
  if (update.partial) replace(panel.preview, h("p", {class: "preview-label"}, "Preview"), renderMedia(update.partial));
}

/** Follow a queued request until it completes; the stream is reopened if it drops. */
async function follow(handle, panel, signal) {
  for (let attempt = 0; attempt <= RECONNECTS; attempt += 1) {
    replace(panel.logs);  // a new stream sends every log line again
    try {
      for await (const update of statusEvents(handle.status_url, signal)) {
        showUpdate(panel, update);
        if (update.status === "COMPLETED") return update;
      }
    } catch (error) {
      if (signal.aborted || attempt === RECONNECTS) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
  }
  throw new Error("the status stream kept closing before the request ended");
}

export async function endpointPage(view, endpointId, signal) {
  const [document, found] = await Promise.all([endpointDocument(endpointId),
    call(`/v1/models?endpoint_id=${encodeURIComponent(endpointId)}`)]);
  const form = buildForm(document, endpointId);
  const panel = runPanel();
  const code = h("div", {class: "code-box"});
  const runButton = h("button", {type: "submit", class: "primary"}, "Run");
  const cancelButton = h("button", {type: "button", hidden: true}, "Cancel");
  const showCode = (input) => replace(code, h("h2", {}, "Code"), snippetPanel(endpointId, input));

  async function run() {
    form.clearErrors();
    panel.reset();
    const input = form.read();
    showCode(input);
    runButton.disabled = true;
    try {
      panel.status.textContent = "Submitting…";
      const handle = await submit(endpointId, input);
      cancelButton.hidden = false;
      cancelButton.onclick = async () => {
        panel.status.textContent = "Cancelling…";
        await cancel(handle.cancel_url);
      };
      const final = await follow(handle, panel, signal);
      const output = await call(handle.response_url).catch((error) => error);
      showOutcome(input, output, final);
    } catch (error) {
      if (!signal.aborted) showFailure(error);
    } finally {
      runButton.disabled = false;
      cancelButton.hidden = true;
    }
  }

  function showOutcome(input, output, final) {
    if (output instanceof ApiError) {
      showFailure(output);
      return;
    }
    panel.progress.hidden = true;
    panel.status.textContent = `Completed${final.metrics && final.metrics.inference_time
      ? ` in ${final.metrics.inference_time.toFixed(2)} s` : ""}`;
    replace(panel.preview);
    replace(panel.result, renderResult(input, output));
  }

  function showFailure(error) {
    if (error instanceof ApiError && error.fieldErrors.length) {
      form.showErrors(error.fieldErrors);
      panel.status.textContent = "The input has errors: see the fields marked.";
    } else {
      panel.status.textContent = `Failed: ${error.message}`;
    }
  }

  const formNode = h("form", {class: "input-form", novalidate: true, "aria-label": "Input",
    onsubmit: (event) => {
      event.preventDefault();
      run();
    }},
  form.node,
  h("div", {class: "actions"}, runButton, cancelButton,
    h("button", {type: "button", onclick: () => {
      form.write({});
      form.clearErrors();
      showCode(form.read());
    }}, "Reset")));

  replace(view, header(endpointId, found.models[0]),
    h("div", {class: "workspace"},
      h("section", {class: "input-panel", "aria-labelledby": "input-title"},
        h("h2", {id: "input-title"}, "Input"), formNode),
      h("section", {class: "output-panel", "aria-labelledby": "result-title"},
        h("h2", {id: "result-title"}, "Result"), panel.node, code)));

  const given = takeHandoff(endpointId);
  if (given) form.write(given.input);
  showCode(form.read());
  if (given && given.run) await run();
}
