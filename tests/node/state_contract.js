// Checks editstore's StateService contract from Node.js, with nothing but the
// .proto files of protos/ and the npm packages @grpc/grpc-js and
// @grpc/proto-loader.
//
// Usage: node state_contract.js HOST:PORT
//
// Prints one "ok ..." line per check and "all checks passed" at the end; exits
// with 1 and the failed check on stderr otherwise. int64 fields (versions,
// sequences) are read as strings (longs: String), so that no value above 2**53
// loses digits, and documents are compared as JSON text where JavaScript
// numbers could not hold their values.
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const DEADLINE_MS = 10_000;
const BIG_INTEGER_TEXT = "9007199254740993"; // 2**53 + 1

// google/protobuf/timestamp.proto and field_mask.proto are not files under
// PROTO_ROOT: protobufjs has them built in and falls back to those copies
// after proto-loader warns that the include path lacks them.
process.removeAllListeners("warning");
process.on("warning", (warning) => {
  if (!/google\/protobuf\/\w+\.proto not found/.test(warning.message)) {
    console.error(`${warning.name}: ${warning.message}`);
  }
});

function loadServices() {
  const definition = protoLoader.loadSync(
    ["editstore/v1/session.proto", "editstore/v1/state.proto"],
    {
      includeDirs: [PROTO_ROOT],
      keepCase: true,
      longs: String,
      enums: String,
      defaults: true,
      oneofs: true,
    },
  );
  const editstore = grpc.loadPackageDefinition(definition).editstore.v1;
  return { SessionService: editstore.SessionService, StateService: editstore.StateService };
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

async function rejected(promise) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new assert.AssertionError({ message: "the call succeeded but should have failed" });
}

// Reads a server stream into a queue so that each event can be awaited in turn.
class EventQueue {
  constructor(call) {
    this.items = [];
    this.waiters = [];
    call.on("data", (event) => this.push({ event }));
    call.on("error", (error) => this.push({ error }));
    call.on("end", () => this.push({ end: true }));
  }

  push(item) {
    const waiter = this.waiters.shift();
    if (waiter) waiter(item);
    else this.items.push(item);
  }

  next(timeoutMs = DEADLINE_MS) {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no stream event within the deadline")), timeoutMs);
      this.waiters.push((item) => {
        clearTimeout(timer);
        resolve(item);
      });
    });
  }

  // Returns the next event that is not a heartbeat.
  async nextEvent() {
    for (;;) {
      const item = await this.next();
      assert.ok(item.event, `stream ended: ${item.error ? item.error.message : "end"}`);
      if (item.event.type !== "WATCH_EVENT_TYPE_HEARTBEAT") return item.event;
    }
  }
}

function ok(check) {
  console.log(`ok ${check}`);
}

async function main(address) {
  const { SessionService, StateService } = loadServices();
  const credentials = grpc.credentials.createInsecure();
  const sessions = new SessionService(address, credentials);
  const states = new StateService(address, credentials);

  const session = await unary(sessions, "CreateSession", {
    session: { image_path: "/photos/lake.jpg", naive_prompt: "make the sky dramatic" },
  });
  assert.match(session.id, /^[0-9a-f-]{36}$/);
  ok("CreateSession returns a session id");

  const empty = await unary(states, "GetState", { session_id: session.id });
  assert.equal(empty.version, "0");
  assert.equal(empty.document_json, "{}");
  ok("GetState before any write is version 0 and {}");

  const missing = await rejected(unary(states, "GetState", { session_id: "no-such-session" }));
  assert.equal(missing.code, grpc.status.NOT_FOUND);
  ok("GetState of a missing session is NOT_FOUND");

  const document =
    `{"session_id":"${session.id}","current_stage":"analysis",` +
    `"big":${BIG_INTEGER_TEXT},"int":3,"float":3.0,"text":"h\u00e9llo \u{1F3A8} \u05e9\u05dc\u05d5\u05dd"}`;
  const put = await unary(states, "PutState", {
    session_id: session.id,
    document_json: document,
    expected_version: "0",
  });
  assert.equal(put.version, "1");
  assert.equal(put.document_json, document);
  // JSON.parse would turn the big integer into 9007199254740992; the text keeps it.
  assert.notEqual(String(JSON.parse(put.document_json).big), BIG_INTEGER_TEXT);
  assert.ok(put.document_json.includes(`"big":${BIG_INTEGER_TEXT}`));
  assert.ok(put.document_json.includes('"int":3,"float":3.0'));
  assert.ok(put.update_time);
  assert.notEqual(put.update_time.seconds, "0");
  ok("PutState with expected_version 0 stores the document exactly, version 1");

  const stale = await rejected(
    unary(states, "PutState", { session_id: session.id, document_json: "{}", expected_version: "0" }),
  );
  assert.equal(stale.code, grpc.status.ABORTED);
  assert.match(stale.details, /version 1/);
  assert.match(stale.details, /expected_version is 0/);
  ok("PutState with a stale expected_version is ABORTED naming both versions");

  const nan = await rejected(
    unary(states, "PutState", { session_id: session.id, document_json: '{"x": NaN}' }),
  );
  assert.equal(nan.code, grpc.status.INVALID_ARGUMENT);
  assert.match(nan.details, /document_json/);
  ok("PutState with NaN is INVALID_ARGUMENT");

  const watchCall = states.WatchState({ session_id: session.id, from_version: "1" });
  const watch = new EventQueue(watchCall);
  const snapshotCall = states.WatchState({ session_id: session.id, from_version: "0" });
  const fromZero = new EventQueue(snapshotCall);
  const snapshot = await fromZero.nextEvent();
  assert.equal(snapshot.type, "WATCH_EVENT_TYPE_SNAPSHOT");
  assert.equal(snapshot.state.version, "1");
  assert.equal(snapshot.state.document_json, document);
  ok("WatchState from version 0 starts with a SNAPSHOT of the document");

  const patchText = '{"current_stage":"prompting","float":null,"intent":{"confidence":0.75}}';
  const patched = await unary(states, "PatchState", {
    session_id: session.id,
    merge_patch_json: patchText,
    expected_version: "1",
  });
  assert.equal(patched.version, "2");
  const expected =
    `{"session_id":"${session.id}","current_stage":"prompting",` +
    `"big":${BIG_INTEGER_TEXT},"int":3,"text":"h\u00e9llo \u{1F3A8} \u05e9\u05dc\u05d5\u05dd",` +
    `"intent":{"confidence":0.75}}`;
  assert.equal(patched.document_json, expected);
  ok("PatchState applies the merge patch: replaced, removed and added members");

  for (const [name, queue] of [["from version 1", watch], ["after the snapshot", fromZero]]) {
    const change = await queue.nextEvent();
    assert.equal(change.type, "WATCH_EVENT_TYPE_CHANGE");
    assert.equal(change.state.version, "2");
    assert.equal(change.state.document_json, expected);
    assert.equal(change.merge_patch_json, patchText);
    ok(`WatchState ${name} sends the CHANGE with its document and patch`);
  }

  const stream = states.StreamStateUpdates();
  const acks = new EventQueue(stream);
  stream.write({ sequence: "10", session_id: session.id, merge_patch_json: '{"step":1}' });
  stream.write({ sequence: "11", session_id: session.id, merge_patch_json: '{"step": Infinity}' });
  stream.write({ sequence: "12", session_id: session.id, document_json: expected, expected_version: "3" });
  stream.end();
  const received = [];
  for (;;) {
    const item = await acks.next();
    if (item.end) break;
    assert.ok(item.event, `update stream failed: ${item.error && item.error.message}`);
    received.push(item.event);
  }
  assert.deepEqual(
    received.map((ack) => [ack.sequence, ack.version, ack.code]),
    [
      ["10", "3", 0],
      ["11", "0", grpc.status.INVALID_ARGUMENT],
      ["12", "4", 0],
    ],
  );
  ok("StreamStateUpdates acknowledges each update in order, a bad one with its code");

  for (const version of ["3", "4"]) {
    const change = await watch.nextEvent();
    assert.equal(change.type, "WATCH_EVENT_TYPE_CHANGE");
    assert.equal(change.state.version, version);
  }
  ok("WatchState sends the streamed changes, not the failed one");

  const listed = await unary(states, "ListStateVersions", { session_id: session.id });
  assert.deepEqual(
    listed.versions.map((state) => state.version),
    ["1", "2", "3", "4"],
  );
  assert.equal(listed.oldest_kept_version, "1");
  assert.equal(listed.versions[0].document_json, document);
  ok("ListStateVersions returns every kept version, oldest first");

  const resumed = await unary(sessions, "ResumeSession", { id: session.id });
  assert.equal(resumed.state.version, "4");
  assert.equal(resumed.state.document_json, expected);
  ok("ResumeSession returns the state document and its version");

  await unary(sessions, "DeleteSession", { id: session.id });
  const deleted = await watch.nextEvent();
  assert.equal(deleted.type, "WATCH_EVENT_TYPE_SESSION_DELETED");
  const end = await watch.next();
  assert.ok(end.end, `expected the end of the watch, got ${JSON.stringify(end)}`);
  ok("DeleteSession ends the watch with SESSION_DELETED");

  snapshotCall.cancel();
  sessions.close();
  states.close();
  console.log("all checks passed");
}

const address = process.argv[2];
if (!address) {
  console.error("usage: node state_contract.js HOST:PORT");
  process.exit(2);
}
main(address).then(
  () => process.exit(0),
  (error) => {
    console.error(error && error.stack ? error.stack : error);
    process.exit(1);
  },
);
