// The server's HTTP APIs, called with the key kept in this browser only.

const KEY_ITEM = "openfal.key";

export const key = {
  get: () => localStorage.getItem(KEY_ITEM) || "",
  set: (value) => localStorage.setItem(KEY_ITEM, value.trim()),
  forget: () => localStorage.removeItem(KEY_ITEM),
};

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail !== undefined ? body.detail : body;
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }

  /** The `[{loc, msg, type}]` items of a 422, or an empty list. */
  get fieldErrors() {
    const detail = this.body && this.body.detail;
    return this.status === 422 && Array.isArray(detail) ? detail : [];
  }
}

function headers(extra = {}) {
  const secret = key.get();
  return secret ? {Authorization: `Key ${secret}`, ...extra} : extra;
}

async function body(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return text;
  }
}

/** A JSON call; throws ApiError on any status but 2xx. */
export async function call(path, {method = "GET", json, signal} = {}) {
  const init = {method, signal, headers: headers()};
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const parsed = await body(response);
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

/** Every served endpoint, all pages of `/v1/models`. */
export async function listModels() {
  const models = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({limit: "100"});
    if (cursor) query.set("cursor", cursor);
    const page = await call(`/v1/models?${query}`);
    models.push(...page.models);
    cursor = page.has_more ? page.next_cursor : null;
  } while (cursor);
  return models;
}

export function endpointDocument(endpointId) {
  return call(`/api/openapi/queue/openapi.json?endpoint_id=${encodeURIComponent(endpointId)}`);
}

/** `owner/app`: the queue's request URLs leave an endpoint's sub-path out. */
export function appId(endpointId) {
  return endpointId.split("/").slice(0, 2).join("/");
}

export function requestUrls(endpointId, requestId) {
  const response = `/queue/${appId(endpointId)}/requests/${requestId}`;
  return {response_url: response, status_url: `${response}/status`, cancel_url: `${response}/cancel`};
}

export function submit(endpointId, input) {
  return call(`/queue/${endpointId}`, {method: "POST", json: input});
}

export function cancel(cancelUrl) {
  return call(cancelUrl, {method: "PUT"}).catch((error) => {
    if (error.status !== 400) throw error;  // 400: it had already ended
    return error.body;
  });
}

/**
 * The status stream of a queued request (server-sent events read through fetch, so the key
 * goes in a header): yields each status object until the stream ends.
 */
export async function* statusEvents(statusUrl, signal) {
  const response = await fetch(`${statusUrl}/stream?logs=1`, {headers: headers(), signal});
  if (!response.ok) throw new ApiError(response.status, await body(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      buffer = buffer.slice(end + 2);
      if (data) yield JSON.parse(data);
    }
  }
}

/** Upload a file as the official clients do: initiate, then PUT the bytes. Its URL. */
export async function upload(file) {
  const contentType = file.type || "application/octet-stream";
  const {upload_url: uploadUrl, file_url: fileUrl} = await call("/storage/upload/initiate", {
    method: "POST", json: {content_type: contentType, file_name: file.name},
  });
  const response = await fetch(uploadUrl, {method: "PUT", body: file, headers: {"Content-Type": contentType}});
  if (!response.ok) throw new ApiError(response.status, await body(response));
  return fileUrl;
}
