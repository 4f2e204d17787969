// A form generated from an endpoint's OpenAPI input schema.
//
// Every field is a widget: {node, read(), write(value), child(key), showError(text),
// clearErrors()}. read() gives undefined for "leave it out"; the object holding the field
// then omits it, and also omits a value equal to the field's default, so the JSON sent (and
// the code snippets) carry only what was chosen. A 422's `loc` is walked down the widget tree
// to put each message next to its field.

import {upload} from "./api.js";
import {h, replace, uid} from "./dom.js";

const MAX_SLIDER_RANGE = 100000;
const LONG_TEXT = new Set(["prompt", "negative_prompt", "text", "caption", "system_prompt"]);

/** The endpoint's input schema in its OpenAPI document. */
export function inputSchema(document, endpointId) {
  const operation = document.paths[`/${endpointId}`].post;
  return operation.requestBody.content["application/json"].schema;
}

function resolver(document) {
  const schemas = (document.components && document.components.schemas) || {};
  return function resolve(schema) {
    let resolved = schema || {};
    while (resolved.$ref) resolved = schemas[resolved.$ref.split("/").pop()] || {};
    return resolved;
  };
}

/**
 * A field's schema with its `$ref` followed (keeping the title, description and default
 * beside it) and a nullable `anyOf` folded into one.
 */
function fieldSchema(schema, resolve) {
  const {$ref, ...siblings} = schema || {};
  const own = $ref ? {...resolve({$ref}), ...siblings} : siblings;
  if (!own.anyOf) return own;
  const options = own.anyOf.map(resolve).filter((option) => option.type !== "null");
  const {anyOf, ...rest} = own;
  return options.length === 1 ? {...options[0], ...rest} : {...rest, options};
}

function kindOf(name, schema) {
  if (schema.options) {
    const preset = schema.options.find((option) => option.enum);
    const custom = schema.options.find((option) => option.type === "object" && option.properties);
    return preset && custom && schema.options.length === 2 ? "preset" : "json";
  }
  if (schema.enum) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (schema.type === "string") return isFileField(name, schema) ? "file" : "text";
  if (schema.type === "array" && schema.items) return "list";
  if (schema.type === "object" && schema.properties) return "object";
  return "json";
}

function isFileField(name, schema) {
  return /(^|_)urls?$/.test(name) || schema.format === "uri" || schema.format === "binary";
}

function humanize(name) {
  const words = String(name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/**
 * The whole form: {node, read(), write(input), showErrors(detail), clearErrors()}.
 * `detail` is a 422's list; messages whose field is not in the form go to the top.
 */
export function buildForm(document, endpointId) {
  const resolve = resolver(document);
  const root = objectWidget(resolve(inputSchema(document, endpointId)), [], {resolve, root: true});
  const general = h("div", {class: "form-errors", role: "alert"});
  return {
    node: h("div", {class: "fields"}, general, root.node),
    read: () => root.read() || {},
    write: (input) => root.write(input || {}),
    clearErrors() {
      root.clearErrors();
      replace(general);
    },
    showErrors(detail) {
      this.clearErrors();
      const located = detail.map((error) => ({error, chain: locate(root, error.loc || [])}));
      for (const {error, chain} of located) {
        const widget = chain.at(-1);
        // When every branch of a union fails pydantic reports each (`image_size` is neither
        // a preset nor a valid {width, height}): an error deeper in the field wins.
        if (located.some((other) => other.chain.length > chain.length && other.chain.includes(widget))) continue;
        if (widget) widget.showError(error.msg);
        else general.append(h("p", {}, `${(error.loc || []).join(".")}: ${error.msg}`));
      }
    },
  };
}

/** The widgets a 422 `loc` leads through; union tags (`ImageSize`, `literal[...]`) are skipped. */
function locate(root, loc) {
  const chain = [];
  let widget = root;
  for (const segment of loc[0] === "body" ? loc.slice(1) : loc) {
    const next = widget.child(segment);
    if (next) {
      widget = next;
      chain.push(next);
    }
  }
  return chain;
}

/** The label, description and error line every field has around its control. */
function frame(name, schema, required, control, ids) {
  const error = h("p", {class: "field-error", id: ids.error, hidden: true});
  const description = schema.description
    ? h("p", {class: "field-description", id: ids.description}, schema.description) : null;
  const label = h("label", {for: ids.control, class: "field-label"}, schema.title || humanize(name),
    required ? h("span", {class: "required", "aria-hidden": "true"}, " *") : null);
  const node = h("div", {class: "field", "data-field": name}, label, control, description, error);
  return {node, error};
}

function fieldIds(name) {
  const control = uid(`field-${name}`);
  return {control, description: `${control}-description`, error: `${control}-error`};
}

/** Error display for widgets with one labelled control. */
function errorsOn(error, controls, ids, described) {
  const describedBy = described ? `${ids.description} ${ids.error}` : ids.error;
  for (const control of controls) control.setAttribute("aria-describedby", describedBy);
  return {
    showError(text) {
      error.hidden = false;
      error.textContent = error.textContent ? `${error.textContent} ${text}` : text;
      for (const control of controls) control.setAttribute("aria-invalid", "true");
    },
    clearErrors() {
      error.hidden = true;
      error.textContent = "";
      for (const control of controls) control.removeAttribute("aria-invalid");
    },
  };
}

const noChildren = () => null;

function widgetFor(name, schema, path, context) {
  const build = {enum: enumWidget, boolean: booleanWidget, number: numberWidget, text: textWidget,
    file: fileWidget, list: listWidget, object: objectWidget, preset: presetWidget, json: jsonWidget};
  return build[kindOf(name, schema)](schema, path, {...context, name});
}

/**
 * A field around one labelled `control`; `wrapper` is what is shown (the control and what
 * goes with it), `controls` what is marked invalid with it.
 */
function simpleWidget(name, schema, context, {control, wrapper = control, controls = [control]},
  {read, write}) {
  const ids = fieldIds(name);
  control.id = ids.control;
  if (context.required) control.setAttribute("aria-required", "true");
  const {node, error} = frame(name, schema, context.required, wrapper, ids);
  const errors = errorsOn(error, controls, ids, Boolean(schema.description));
  const widget = {node, read, write, child: noChildren, ...errors};
  if (schema.default !== undefined && schema.default !== null) write(schema.default);
  else if (context.required && schema.examples && schema.examples.length) write(schema.examples[0]);
  return widget;
}

function enumWidget(schema, path, context) {
  const values = schema.enum;
  const optional = !context.required && (schema.default === undefined || schema.default === null);
  const select = h("select", {},
    optional ? h("option", {value: ""}, "(not set)") : null,
    values.map((value, index) => h("option", {value: String(index)}, String(value))));
  return simpleWidget(context.name, schema, context, {control: select}, {
    read: () => (select.value === "" ? undefined : values[Number(select.value)]),
    write(value) {
      const index = values.findIndex((option) => same(option, value) || String(option) === String(value));
      select.value = index >= 0 ? String(index) : "";
    },
  });
}

function booleanWidget(schema, path, context) {
  const box = h("input", {type: "checkbox"});
  // Unchecked where the default is null (not set) leaves the field out.
  const unset = !context.required && (schema.default === null || schema.default === undefined);
  return simpleWidget(context.name, schema, context, {control: box}, {
    read: () => (box.checked || !unset ? box.checked : undefined),
    write(value) {
      box.checked = Boolean(value);
    },
  });
}

/** A number box; with both bounds (and a usable range) a slider beside it, kept in step. */
function numberWidget(schema, path, context) {
  const integer = schema.type === "integer";
  const min = schema.minimum ?? (schema.exclusiveMinimum !== undefined
    ? schema.exclusiveMinimum + (integer ? 1 : 0) : undefined);
  const max = schema.maximum ?? (schema.exclusiveMaximum !== undefined
    ? schema.exclusiveMaximum - (integer ? 1 : 0) : undefined);
  const box = h("input", {type: "number", inputmode: integer ? "numeric" : "decimal",
    step: integer ? "1" : "any", min: min !== undefined ? String(min) : null,
    max: max !== undefined ? String(max) : null});
  const bounded = min !== undefined && max !== undefined && max - min <= MAX_SLIDER_RANGE;
  let slider = null;
  let parts = {control: box};
  if (bounded) {
    const step = integer ? 1 : (max - min) / 100;
    slider = h("input", {type: "range", min: String(min), max: String(max), step: String(step),
      "aria-label": `${schema.title || humanize(context.name)} (slider)`,
      oninput: () => { box.value = slider.value; }});
    box.addEventListener("input", () => { slider.value = box.value; });
    parts = {control: box, wrapper: h("div", {class: "number-pair"}, slider, box), controls: [box, slider]};
  }
  return simpleWidget(context.name, schema, context, parts, {
    read() {
      if (box.value.trim() === "") return undefined;
      const number = Number(box.value);
      return Number.isFinite(number) ? number : box.value;
    },
    write(value) {
      box.value = value === null || value === undefined ? "" : String(value);
      if (slider) slider.value = box.value;
    },
  });
}

function textWidget(schema, path, context) {
  const long = LONG_TEXT.has(context.name) || (schema.maxLength || 0) > 300;
  const input = long ? h("textarea", {rows: "3"}) : h("input", {type: "text"});
  return simpleWidget(context.name, schema, context, {control: input}, {
    read: () => (input.value === "" ? undefined : input.value),
    write(value) {
      input.value = value === null || value === undefined ? "" : String(value);
    },
  });
}

/** A URL, or a file chosen or dropped here and uploaded to the server's storage. */
function fileWidget(schema, path, context) {
  const label = schema.title || humanize(context.name);
  const url = h("input", {type: "url", placeholder: "https://… or drop a file here"});
  const picker = h("input", {type: "file", "aria-label": `Upload a file for ${label}`});
  const status = h("span", {class: "upload-status", role: "status"});
  const preview = h("img", {class: "upload-preview", alt: `Preview of ${label}`, hidden: true,
    onerror: () => { preview.hidden = true; }});
  const showPreview = () => {
    preview.hidden = !/^(https?:|data:image\/)/.test(url.value) || !looksLikeImage(url.value);
    if (!preview.hidden) preview.src = url.value;
  };
  async function take(file) {
    status.textContent = `Uploading ${file.name}…`;
    try {
      url.value = await upload(file);
      status.textContent = `Uploaded ${file.name}`;
      showPreview();
    } catch (error) {
      status.textContent = `Upload failed: ${error.message}`;
    }
  }
  picker.addEventListener("change", () => picker.files[0] && take(picker.files[0]));
  url.addEventListener("change", showPreview);
  const zone = h("div", {class: "file-field"}, url, h("div", {class: "file-row"}, picker, status), preview);
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    if (event.dataTransfer.files[0]) take(event.dataTransfer.files[0]);
  });
  return simpleWidget(context.name, schema, context, {control: url, wrapper: zone}, {
    read: () => (url.value.trim() === "" ? undefined : url.value.trim()),
    write(value) {
      url.value = value === null || value === undefined ? "" : String(value);
      showPreview();
    },
  });
}

function looksLikeImage(value) {
  return value.startsWith("data:image/") || /\.(png|jpe?g|webp|gif|bmp|avif)(\?|$)/i.test(value);
}

/** Free-form JSON, for shapes the form has no widget for. */
function jsonWidget(schema, path, context) {
  const area = h("textarea", {rows: "3", class: "code", spellcheck: "false"});
  return simpleWidget(context.name, {...schema, description: [schema.description, "(JSON)"]
    .filter(Boolean).join(" ")}, context, {control: area}, {
    read() {
      if (area.value.trim() === "") return undefined;
      try {
        return JSON.parse(area.value);
      } catch {
        return area.value;  // the server's 422 says what is wrong with it
      }
    },
    write(value) {
      area.value = value === null || value === undefined ? "" : JSON.stringify(value, null, 2);
    },
  });
}

/**
 * Grouped fields; the root object is the form itself, without a frame. A `complete` object
 * (a list item, a custom size) keeps its fields' defaults in what it reads.
 */
function objectWidget(schema, path, context) {
  const required = new Set(schema.required || []);
  const order = schema["x-fal-order-properties"] || Object.keys(schema.properties || {});
  const fields = new Map();
  for (const name of order) {
    const property = fieldSchema(schema.properties[name], context.resolve);
    fields.set(name, {schema: property, widget: widgetFor(name, property, [...path, name],
      {resolve: context.resolve, required: required.has(name)})});
  }
  const children = [...fields.values()].map(({widget}) => widget.node);
  const error = h("p", {class: "field-error", hidden: true});
  const node = context.root ? h("div", {}, children) : h("fieldset", {class: "group"},
    h("legend", {}, schema.title || humanize(context.name)), error, children);
  return {
    node,
    read() {
      const value = {};
      for (const [name, {schema: property, widget}] of fields) {
        const item = widget.read();
        if (item === undefined) continue;
        const isDefault = property.default !== undefined && same(item, property.default);
        if (isDefault && !required.has(name) && !context.complete) continue;
        value[name] = item;
      }
      return Object.keys(value).length || context.required ? value : undefined;
    },
    write(value) {
      for (const [name, {schema: property, widget}] of fields) {
        const given = value && value[name] !== undefined ? value[name] : property.default;
        widget.write(given === undefined ? null : given);
      }
    },
    child: (key) => (fields.has(key) ? fields.get(key).widget : null),
    showError(text) {
      error.hidden = false;
      error.textContent = text;
    },
    clearErrors() {
      error.hidden = true;
      for (const {widget} of fields.values()) widget.clearErrors();
    },
  };
}

/** A preset name or a custom object (`image_size`: "square_hd" or {width, height}). */
function presetWidget(schema, path, context) {
  const presets = schema.options.find((option) => option.enum).enum;
  const customSchema = schema.options.find((option) => option.type === "object");
  const custom = objectWidget({...customSchema, title: "Custom size"}, path,
    {...context, required: true, complete: true});
  custom.node.classList.add("custom-size");
  const select = h("select", {},
    presets.map((value) => h("option", {value}, String(value))),
    h("option", {value: "custom"}, "custom…"));
  const sync = () => { custom.node.hidden = select.value !== "custom"; };
  select.addEventListener("change", sync);
  const wrapper = h("div", {class: "preset"}, select, custom.node);
  const widget = simpleWidget(context.name, {...schema, default: undefined}, context, {control: select, wrapper}, {
    read: () => (select.value === "custom" ? custom.read() : select.value),
    write(value) {
      if (value !== null && typeof value === "object") {
        select.value = "custom";
        custom.write(value);
      } else {
        select.value = presets.includes(value) ? value : presets[0];
      }
      sync();
    },
  });
  widget.write(schema.default ?? presets[0]);
  const clearOwn = widget.clearErrors;
  return {...widget, child: custom.child, clearErrors() {
    clearOwn();
    custom.clearErrors();
  }};
}

/** Items added and removed one by one: strings (`image_urls`) or objects (`loras`). */
function listWidget(schema, path, context) {
  const itemSchema = fieldSchema(schema.items, context.resolve);
  const itemName = context.name.replace(/s$/, "");
  const title = schema.title || humanize(context.name);
  const items = h("ol", {class: "list-items"});
  const error = h("p", {class: "field-error", hidden: true});
  let widgets = [];

  function render(values) {
    widgets = values.map((value, index) => {
      const widget = widgetFor(itemName, {...itemSchema, title: `${humanize(itemName)} ${index + 1}`},
        [...path, index], {resolve: context.resolve, required: true, complete: true});
      widget.write(value);
      return widget;
    });
    replace(items, widgets.map((widget, index) => h("li", {}, widget.node,
      h("button", {type: "button", class: "small", onclick: () => remove(index)},
        `Remove ${itemName.replace(/_/g, " ")} ${index + 1}`))));
  }
  const current = () => widgets.map((widget) => widget.read() ?? null);
  function remove(index) {
    render(current().filter((_, at) => at !== index));
  }
  const add = h("button", {type: "button", class: "small", onclick: () => {
    render([...current(), null]);
    const controls = items.lastElementChild.querySelectorAll("input, select, textarea");
    if (controls.length) controls[0].focus();
  }}, `Add ${itemName.replace(/_/g, " ")}`);

  const node = h("fieldset", {class: "group list"}, h("legend", {}, title),
    schema.description ? h("p", {class: "field-description"}, schema.description) : null,
    error, items, add);
  return {
    node,
    read() {
      const values = current();
      return values.length || context.required ? values : undefined;
    },
    write(values) {
      render(Array.isArray(values) ? values : []);
    },
    child: (key) => widgets[Number(key)] || null,
    showError(text) {
      error.hidden = false;
      error.textContent = text;
    },
    clearErrors() {
      error.hidden = true;
      for (const widget of widgets) widget.clearErrors();
    },
  };
}
