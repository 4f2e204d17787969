"use strict";
/**
 * Drives the official `@fal-ai/client` against an openfal server, configured the way a user
 * would: nothing but `proxyUrl` (and, for realtime, a WebSocket class that rewrites the
 * hard-coded `wss://fal.run/` URL).
 *
 *   node scenarios.js <scenario> <openfal base URL>
 *
 * Prints one JSON line with what the client returned; tests/test_js_client.py asserts on it.
 * Binary values are printed as {"bytes": [...]}, errors as {"error": {name, status, ...}}.
 */

const crypto = require("node:crypto");
const zlib = require("node:zlib");
const WebSocketBase = require("ws");
const { fal, createFalClient, ApiError, ValidationError } = require("@fal-ai/client");

/**
 * The client configuration a user of a self-hosted openfal needs. Credentials are the
 * client's default: FAL_KEY from the environment when set, sent as `Authorization: Key ...`.
 */
function clientConfig(base) {
  return { proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } };
}

/**
 * Realtime URLs are hard-coded as wss://fal.run/...: a WebSocket class that rewrites them.
 * Returns the list of URLs the client opened, as it asked for them.
 */
function installWebSocket(base) {
  const wsBase = base.replace(/^http/, "ws");
  const opened = [];
  globalThis.WebSocket = class OpenfalWebSocket extends WebSocketBase {
    constructor(url, protocols) {
      opened.push(String(url));
      super(String(url).replace(/^wss:\/\/fal\.run\//, `${wsBase}/`), protocols);
    }
  };
  return opened;
}

// ---------------------------------------------------------------------------------------
// Helpers

/** Progress notes on stderr: shown by the Python test when a scenario fails or hangs. */
function trace(...parts) {
  console.error(`[${new Date().toISOString()}]`, ...parts);
}

function describeError(error) {
  return {
    error: {
      name: error.name,
      isApiError: error instanceof ApiError,
      isValidationError: error instanceof ValidationError,
      status: error.status,
      message: error.message,
      body: error.body,
      requestId: error.requestId,
      fieldErrors: error instanceof ValidationError ? error.fieldErrors : undefined,
    },
  };
}

/** What a promise settled with: {value} or {error}. */
function settled(promise) {
  return promise.then((value) => ({ value: value ?? null }), describeError);
}

/** JSON-friendly copy: bytes become {bytes: [...]}. */
function plain(value) {
  if (value instanceof Uint8Array) return { bytes: Array.from(value) };
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

function sha256(bytes) {
  return crypto.createHash("sha256").update(bytes).digest("hex");
}

async function download(url) {
  const response = await fetch(url);
  const bytes = new Uint8Array(await response.arrayBuffer());
  return {
    status: response.status,
    contentType: response.headers.get("content-type"),
    size: bytes.length,
    sha256: sha256(bytes),
    bytes,
  };
}

/** A small RGB PNG, encoded here so no image library is needed. */
function png(width, height) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB, no interlace
  const rows = [];
  for (let y = 0; y < height; y++) {
    const row = [0]; // filter: none
    for (let x = 0; x < width; x++) row.push(x * 80, y * 120, 200);
    rows.push(Buffer.from(row));
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", zlib.deflateSync(Buffer.concat(rows))),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** Width and height from a PNG's IHDR chunk. */
function pngSize(bytes) {
  const view = Buffer.from(bytes);
  return [view.readUInt32BE(16), view.readUInt32BE(20)];
}

/**
 * Fills every slot of an app (max_concurrency x max_multiplexing, from openfal's /api/apps)
 * with queued requests, so the next request deterministically waits IN_QUEUE.
 * Returns a function that waits for the blockers and returns their results.
 */
async function occupyApp(base, endpointId, input) {
  const headers = process.env.FAL_KEY ? { authorization: `Key ${process.env.FAL_KEY}` } : {};
  const listing = await (await fetch(`${base}/api/apps`, { headers })).json();
  const { config } = listing.endpoints.find((e) => e.endpoint_id === endpointId);
  const ids = [];
  for (let i = 0; i < config.max_concurrency * config.max_multiplexing; i++) {
    ids.push((await fal.queue.submit(endpointId, { input })).request_id);
  }
  trace(`filled ${endpointId} with`, ids);
  return () =>
    Promise.all(
      ids.map(async (requestId) => {
        await fal.queue.subscribeToStatus(endpointId, { requestId, pollInterval: 50 });
        trace("blocker done", requestId);
        return (await fal.queue.result(endpointId, { requestId })).data;
      }),
    );
}

function summarizeUpdate(update) {
  return {
    status: update.status,
    queue_position: update.queue_position,
    logs: (update.logs || []).map((entry) => entry.message),
  };
}

/** Runs one subscribe (polling or streaming) behind a full app, recording every update. */
async function subscribeBehindBusyApp(base, mode) {
  const message = `js ${mode}`;
  const drain = await occupyApp(base, "openfal/work", { seconds: 0.5 });
  let enqueued;
  const updates = [];
  const result = await fal.subscribe("openfal/work", {
    input: { seconds: 0.3, steps: 3, message },
    logs: true,
    mode,
    pollInterval: 50,
    onEnqueue: (requestId) => (enqueued = requestId),
    onQueueUpdate: (update) => updates.push(summarizeUpdate(update)),
  });
  const blockers = await drain();
  return { message, enqueued, updates, result, blockersDone: blockers.length };
}

// ---------------------------------------------------------------------------------------
// Scenarios

const scenarios = {
  /** fal.run: POST and GET runs, result data and requestId. */
  async run() {
    const echo = await fal.run("openfal/echo", { input: { prompt: "hello from js" } });
    const work = await fal.run("openfal/work", { input: { message: "direct", steps: 2 } });
    const get = await fal.run("openfal/echo", { method: "get", input: { prompt: "via get" } });
    return { echo, work, get };
  },

  /** fal.subscribe, polling: queue updates with logs, then the result. */
  subscribePolling(base) {
    return subscribeBehindBusyApp(base, "polling");
  },

  /** fal.subscribe with mode: "streaming": the status stream instead of polling. */
  subscribeStreaming(base) {
    return subscribeBehindBusyApp(base, "streaming");
  },

  /** fal.queue.submit / status / streamStatus / subscribeToStatus / result, one request. */
  async queue() {
    const endpointId = "openfal/work";
    const handle = await fal.queue.submit(endpointId, {
      input: { seconds: 0.3, steps: 3, message: "queued from js" },
      priority: "low",
      hint: "js-hint",
    });
    const requestId = handle.request_id;
    const first = await fal.queue.status(endpointId, { requestId, logs: true });
    const stream = await fal.queue.streamStatus(endpointId, { requestId, logs: true });
    const streamed = [];
    stream.on("data", (update) => streamed.push(summarizeUpdate(update)));
    const streamDone = await stream.done();
    const completed = await fal.queue.subscribeToStatus(endpointId, { requestId, logs: true });
    const final = await fal.queue.status(endpointId, { requestId, logs: true });
    const result = await fal.queue.result(endpointId, { requestId });
    return {
      handle,
      first: summarizeUpdate(first),
      streamed,
      streamDone: summarizeUpdate(streamDone),
      completed: summarizeUpdate(completed),
      final: { ...summarizeUpdate(final), metrics: final.metrics },
      result,
    };
  },

  /** fal.queue.cancel of a queued and of a running openfal/wait request. */
  async cancel(base) {
    const endpointId = "openfal/wait";
    const drain = await occupyApp(base, endpointId, { seconds: 1 });

    const queued = (await fal.queue.submit(endpointId, { input: { seconds: 30 } })).request_id;
    trace("queued request", queued);
    const queuedStatus = await fal.queue.status(endpointId, { requestId: queued });
    const queuedCancel = await settled(fal.queue.cancel(endpointId, { requestId: queued }));
    const queuedFinal = await fal.queue.subscribeToStatus(endpointId, {
      requestId: queued,
      pollInterval: 50,
    });
    trace("queued request final status", queuedFinal);
    const queuedResult = await settled(fal.queue.result(endpointId, { requestId: queued }));

    const running = (await fal.queue.submit(endpointId, { input: { seconds: 30 } })).request_id;
    const stream = await fal.queue.streamStatus(endpointId, { requestId: running });
    const seen = [];
    let runningCancel;
    stream.on("data", (update) => {
      seen.push(update.status);
      trace("running request update", update);
      if (update.status === "IN_PROGRESS" && runningCancel === undefined) {
        runningCancel = settled(fal.queue.cancel(endpointId, { requestId: running }));
      }
    });
    const runningFinal = await stream.done();
    trace("running request status stream done");
    const runningResult = await settled(fal.queue.result(endpointId, { requestId: running }));

    return {
      queued: {
        requestId: queued,
        status: queuedStatus.status,
        queue_position: queuedStatus.queue_position,
        cancel: queuedCancel,
        final: queuedFinal,
        result: queuedResult,
      },
      running: {
        requestId: running,
        seen,
        cancel: await runningCancel,
        final: runningFinal,
        result: runningResult,
      },
      blockers: await drain(),
    };
  },

  /**
   * A status stream opened right after cancelling a queued request must end with its
   * COMPLETED event. Repeated while openfal/wait is full; returns the streams that sent
   * COMPLETED but stayed open (given up on after STREAM_PATIENCE_MS).
   */
  async statusStreamAfterCancel(base) {
    const STREAM_PATIENCE_MS = 1500;
    const ROUNDS = 3;
    const endpointId = "openfal/wait";
    const hung = [];
    let streams = 0;
    for (let round = 0; round < ROUNDS && hung.length === 0; round++) {
      const busyUntil = Date.now() + 1000;
      const drain = await occupyApp(base, endpointId, { seconds: 1.5 });
      while (Date.now() < busyUntil && hung.length === 0) {
        const { request_id: requestId } = await fal.queue.submit(endpointId, {
          input: { seconds: 30 },
        });
        await fal.queue.cancel(endpointId, { requestId });
        const stream = await fal.queue.streamStatus(endpointId, { requestId });
        let closed = false;
        stream.on("done", () => (closed = true));
        const patience = setTimeout(() => stream.abort(), STREAM_PATIENCE_MS);
        const last = await stream.done();
        clearTimeout(patience);
        streams += 1;
        if (!closed) {
          trace("status stream stayed open after", last);
          hung.push({ requestId, lastEvent: last });
        }
      }
      await drain();
    }
    return { streams, hung };
  },

  /** fal.stream / fal.streaming.stream: partials as events, the result from done(). */
  async stream() {
    const ok = await fal.stream("openfal/work/partials", { input: { steps: 3, seconds: 0.3 } });
    const events = [];
    for await (const event of ok) events.push(event);
    const okDone = await ok.done();

    // done() must be observed before iterating: the client rejects it as soon as the
    // request fails, and an unobserved rejection ends the Node process.
    const failed = await fal.streaming.stream("openfal/work/partials", {
      input: { steps: 2, fail: "error" },
    });
    const failedDone = settled(failed.done());
    const failedEvents = [];
    for await (const event of failed) failedEvents.push(event);

    const late = await fal.stream("openfal/work/partials", { input: { steps: 2, fail: "app" } });
    const lateDone = settled(late.done());
    const lateEvents = [];
    late.on("data", (event) => lateEvents.push(event));

    return {
      ok: { requestId: ok.requestId, events, done: okDone },
      failed: { events: failedEvents, done: await failedDone },
      late: { events: lateEvents, done: await lateDone },
    };
  },

  /** fal.storage.upload and fal.storage.transformInput, downloaded back. */
  async storage() {
    const bytes = new Uint8Array(70_000).map((_, i) => (i * 7 + 3) % 256);
    const blobUrl = await fal.storage.upload(new Blob([bytes]));
    const text = "a named file from the JS client\n";
    const fileUrl = await fal.storage.upload(
      new File([text], "notes.txt", { type: "text/plain" }),
      { lifecycle: { expiresIn: "1h" } },
    );
    const nested = await fal.storage.transformInput({
      keep: "as is",
      deep: { file: new Blob(["nested"], { type: "text/plain" }) },
      list: [new Blob(["first"]), new Blob(["second"])],
    });
    const { bytes: blobBytes, ...blobDownload } = await download(blobUrl);
    const { bytes: fileBytes, ...fileDownload } = await download(fileUrl);
    return {
      blob: { url: blobUrl, sha256: sha256(bytes), download: blobDownload },
      file: {
        url: fileUrl,
        text,
        download: { ...fileDownload, text: Buffer.from(fileBytes).toString() },
      },
      blobBytesEqual: Buffer.compare(Buffer.from(bytes), Buffer.from(blobBytes)) === 0,
      nested: {
        input: nested,
        texts: {
          deep: Buffer.from((await download(nested.deep.file)).bytes).toString(),
          list: await Promise.all(
            nested.list.map(async (url) => Buffer.from((await download(url)).bytes).toString()),
          ),
        },
      },
    };
  },

  /** Blobs inside inputs are uploaded by the client before run and subscribe. */
  async autoUpload() {
    const document = Buffer.from("a document the app must read: \u00e9\u00e8\n".repeat(100));
    const image = png(3, 2);
    const run = await fal.run("openfal/media", {
      input: {
        document: new Blob([document], { type: "text/plain" }),
        image: new Blob([image], { type: "image/png" }),
      },
    });
    const subscribed = await fal.subscribe("openfal/media", {
      input: { document: new Blob([document], { type: "text/plain" }) },
    });
    const { bytes: echoBytes, ...echo } = await download(run.data.echo.url);
    const { bytes: flippedBytes, ...flipped } = await download(run.data.flipped.url);
    return {
      sent: { documentSha256: sha256(document), documentSize: document.length },
      run: run.data,
      subscribed: subscribed.data,
      echo: { ...echo, equal: Buffer.compare(document, Buffer.from(echoBytes)) === 0 },
      flipped: { ...flipped, pngSize: pngSize(flippedBytes) },
    };
  },

  /** fal.realtime.connect with the default token provider, through the proxy. */
  async realtime(base) {
    const opened = installWebSocket(base);
    // Sets handler.onResult; returns a function that awaits the next result.
    const answers = (handler) => {
      const pending = [];
      const waiting = [];
      handler.onResult = (result) => {
        const next = waiting.shift();
        if (next) next(result);
        else pending.push(result);
      };
      return () =>
        pending.length ? Promise.resolve(pending.shift()) : new Promise((r) => waiting.push(r));
    };

    const echoErrors = [];
    const echoHandler = { throttleInterval: 0, onError: (e) => echoErrors.push(describeError(e)) };
    const nextEcho = answers(echoHandler);
    const echo = fal.realtime.connect("openfal/realtime-echo", echoHandler);
    const echoes = [];
    for (let n = 0; n < 4; n++) {
      echo.send({ n, image: new Uint8Array([n, 0, 255, 128, n * 2]) });
      echoes.push(await nextEcho());
    }
    const errorsBeforeClose = [...echoErrors];
    echo.close();

    const stepsHandler = { path: "/steps", throttleInterval: 0 };
    const nextStep = answers(stepsHandler);
    const steps = fal.realtime.connect("openfal/realtime-echo", stepsHandler);
    steps.send({ n: 3 });
    const stepResults = [];
    while (stepResults.length === 0 || !("final" in stepResults.at(-1))) {
      stepResults.push(await nextStep());
    }
    steps.close();
    return { echoes, errorsBeforeClose, steps: stepResults, opened };
  },

  /** The apps written with the hosted SDK (tests/test_sdk_apps.py): run, subscribe, stream,
   * realtime, a Blob input uploaded by the client. */
  async sdkApps(base) {
    const opened = installWebSocket(base);
    const greet = await fal.run("openfal/greeter", { input: { name: "Ada", times: 2 } });
    const shout = await fal.subscribe("openfal/greeter/shout", { input: { name: "Ada" } });
    const blank = await settled(fal.run("openfal/greeter", { input: { name: " " } }));
    const count = await fal.subscribe("openfal/counter", { input: { upto: 2 } });
    const stream = await fal.stream("openfal/counter", { input: { upto: 3 } });
    const events = [];
    for await (const event of stream) events.push(event);
    const streamDone = await stream.done();
    const thumbnail = await fal.subscribe("openfal/thumbnailer", {
      input: { image_url: new Blob([png(24, 12)], { type: "image/png" }), max_side: 8 },
    });
    const plural = await fal.run("openfal/pluralizer", { input: { word: "mouse" } });
    const flux = await fal.subscribe("openfal/flux-schnell", {
      input: { prompt: "a red fox in the snow", num_inference_steps: 2, seed: 7 },
    });
    const realtime = await new Promise((resolve, reject) => {
      const connection = fal.realtime.connect("openfal/counter", {
        throttleInterval: 0,
        onResult: (result) => {
          connection.close();
          resolve(result);
        },
        onError: reject,
      });
      connection.send({ text: "stressed" });
    });
    return {
      greet: greet.data, shout: shout.data, blank, count: count.data, events, streamDone,
      thumbnail: thumbnail.data, plural: plural.data, flux: flux.data, realtime, opened,
    };
  },

  /** Validation errors: ValidationError with fieldErrors, from run and from submit. */
  async validation(base) {
    const client = createFalClient(clientConfig(base));
    const extra = await settled(
      client.run("openfal/strict", { input: { prompt: "x", unknown_field: 1 } }),
    );
    const missing = await settled(client.subscribe("openfal/strict", { input: { count: 2 } }));
    const fromApp = await settled(client.run("openfal/work", { input: { fail: "field" } }));
    const again = await client
      .run("openfal/strict", { input: { prompt: "x", unknown_field: 1 } })
      .catch((error) => error);
    const getFieldErrors =
      again instanceof ValidationError ? again.getFieldErrors("unknown_field") : null;
    return { extra, missing, fromApp, getFieldErrors };
  },

  /** The same calls with and without credentials (FAL_KEY) on a server that checks keys. */
  async credentials() {
    return {
      run: await settled(fal.run("openfal/echo", { input: { prompt: "with a key" } })),
      submit: await settled(fal.queue.submit("openfal/echo", { input: { prompt: "queued" } })),
      upload: await settled(fal.storage.upload(new Blob(["key"]))),
    };
  },

  /** Failed requests reject run/result/subscribe; cancel after completion is a 400. */
  async failures() {
    const endpointId = "openfal/work";
    const run = await settled(fal.run(endpointId, { input: { fail: "error" } }));
    const subscribe = await settled(fal.subscribe(endpointId, { input: { fail: "error" } }));
    const appError = await settled(fal.subscribe(endpointId, { input: { fail: "app" } }));

    const requestId = (await fal.queue.submit(endpointId, { input: { fail: "error" } })).request_id;
    const status = await fal.queue.subscribeToStatus(endpointId, { requestId, logs: true });
    const result = await settled(fal.queue.result(endpointId, { requestId }));

    const done = (await fal.queue.submit("openfal/echo", { input: { prompt: "done" } })).request_id;
    await fal.queue.subscribeToStatus("openfal/echo", { requestId: done });
    const cancelCompleted = await settled(fal.queue.cancel("openfal/echo", { requestId: done }));
    return {
      run,
      subscribe,
      appError,
      queued: {
        requestId,
        status: { ...summarizeUpdate(status), error: status.error, error_type: status.error_type },
        result,
      },
      cancelCompleted,
    };
  },
};

async function main() {
  const [name, base] = process.argv.slice(2);
  const scenario = scenarios[name];
  if (!scenario || !base) {
    throw new Error(`usage: node scenarios.js <${Object.keys(scenarios).join("|")}> <base URL>`);
  }
  fal.config(clientConfig(base));
  const result = await scenario(base);
  process.stdout.write(`${JSON.stringify(plain(result))}\n`);
}

// Exit explicitly: realtime token refresh timers would otherwise keep Node alive.
main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
