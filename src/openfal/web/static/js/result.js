// A result rendered by what it holds: images in a grid, video and audio players, other
// files as links; then the request's JSON input and output.

import {h, jsonBlock} from "./dom.js";

const KINDS = [
  ["image", /\.(png|jpe?g|webp|gif|bmp|avif)$/i],
  ["video", /\.(mp4|webm|mov|mkv)$/i],
  ["audio", /\.(wav|mp3|ogg|flac|m4a|aac)$/i],
];

/** Every `{url, ...}` file object in an output, with where it was found. */
export function filesIn(value, path = []) {
  if (Array.isArray(value)) return value.flatMap((item, index) => filesIn(item, [...path, index]));
  if (value === null || typeof value !== "object") return [];
  if (typeof value.url === "string") return [{...value, path: path.join(".")}];
  return Object.entries(value).flatMap(([name, item]) => filesIn(item, [...path, name]));
}

function kindOf(file) {
  const type = file.content_type || (file.url.match(/^data:([^;,]+)/) || [])[1] || "";
  const major = type.split("/")[0];
  if (["image", "video", "audio"].includes(major)) return major;
  const name = file.file_name || new URL(file.url, location.href).pathname;
  const found = KINDS.find(([, pattern]) => pattern.test(name));
  return found ? found[0] : "file";
}

function download(file, label) {
  return h("a", {href: file.url, download: file.file_name || "", target: "_blank", rel: "noopener"}, label);
}

function describe(file) {
  const size = file.width && file.height ? ` ${file.width}×${file.height}` : "";
  return `${file.file_name || file.path}${size}`;
}

function mediaFigure(file, kind) {
  const caption = h("figcaption", {}, describe(file), " · ", download(file, "Download"));
  if (kind === "image") {
    return h("figure", {class: "media image"},
      h("a", {href: file.url, target: "_blank", rel: "noopener"},
        h("img", {src: file.url, alt: `Result ${describe(file)}`, loading: "lazy"})), caption);
  }
  return h("figure", {class: `media ${kind}`},
    h(kind, {src: file.url, controls: true, preload: "metadata", "aria-label": `Result ${describe(file)}`}), caption);
}

/** The media of an output (or a partial result). */
export function renderMedia(output) {
  const files = filesIn(output);
  const images = files.filter((file) => kindOf(file) === "image");
  const others = files.filter((file) => kindOf(file) !== "image");
  return h("div", {class: "media-list"},
    images.length ? h("div", {class: "image-grid"}, images.map((file) => mediaFigure(file, "image"))) : null,
    others.map((file) => {
      const kind = kindOf(file);
      return kind === "file"
        ? h("p", {class: "file-link"}, download(file, `Download ${describe(file)}`))
        : mediaFigure(file, kind);
    }));
}

/** The output's media, then the input and output as JSON. */
export function renderResult(input, output) {
  return h("div", {class: "result"},
    renderMedia(output),
    h("details", {class: "json-details"}, h("summary", {}, "Input (JSON)"), jsonBlock(input, "Input JSON")),
    h("details", {class: "json-details", open: true}, h("summary", {}, "Output (JSON)"),
      jsonBlock(output, "Output JSON")));
}
