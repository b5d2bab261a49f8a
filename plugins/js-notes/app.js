// js-notes: a gatehouse backend written in JavaScript (componentize-js).
//
// Each session keeps its own list of notes:
//   add {"text": T}  -> the new note's id; emits an `added` event
//   list             -> the notes as a JSON array of {"id", "text"}
//   remove {"id": N} -> removes a note (a `failed` error if there is none)
//   whoami           -> JSON with the session id, tenant and backend
//   later MS         -> a `tick` event after MS milliseconds
//
// The gateway makes one component instance per session, so module-level
// state is per session.
import { emit, log, scheduleTick } from "gatehouse:backend/host@0.2.0";

// UTF-8 both ways. (QuickJS, the small runtime, has no TextEncoder.)
const utf8 = (text) => Uint8Array.from(unescape(encodeURIComponent(text)), (c) => c.charCodeAt(0));
const text = (bytes) => decodeURIComponent(escape(String.fromCharCode(...bytes)));

let ctx = null;
const notes = new Map();
let nextId = 1;

// A `command-error` is thrown as {tag, val}: tag is the WIT case name.
const invalidPayload = (message) => ({ tag: "invalid-payload", val: message });
const failed = (message) => ({ tag: "failed", val: message });
const unknownCommand = (message) => ({ tag: "unknown-command", val: message });

function json(payload) {
  try {
    return JSON.parse(text(payload));
  } catch (e) {
    throw invalidPayload(`bad JSON: ${e.message}`);
  }
}

function run(cmd) {
  switch (cmd.name) {
    case "add": {
      const body = json(cmd.payload);
      if (typeof body?.text !== "string") throw invalidPayload('expected {"text": "..."}');
      const id = nextId++;
      notes.set(id, body.text);
      emit({ name: "added", payload: utf8(String(id)) });
      return utf8(String(id));
    }
    case "list":
      return utf8(JSON.stringify([...notes].map(([id, text]) => ({ id, text }))));
    case "remove": {
      const body = json(cmd.payload);
      if (!notes.delete(body?.id)) throw failed(`no note ${JSON.stringify(body?.id)}`);
      return new Uint8Array();
    }
    case "whoami":
      return utf8(JSON.stringify({
        session_id: ctx.sessionId,
        tenant: ctx.tenant,
        backend: ctx.backend,
      }));
    case "later": {
      const ms = Number(text(cmd.payload));
      if (!Number.isInteger(ms) || ms < 0) throw invalidPayload("expected milliseconds");
      scheduleTick(BigInt(ms));
      return new Uint8Array();
    }
    case "bug":
      // An ordinary exception: `handle` below turns it into `failed`.
      return null.missing;
    default:
      throw unknownCommand(`js-notes has no command ${JSON.stringify(cmd.name)}`);
  }
}

export const session = {
  open(context) {
    ctx = context;
    log("info", `js-notes open for ${context.tenant}`);
  },
  handle(cmd) {
    try {
      return run(cmd);
    } catch (e) {
      // Anything thrown that is not a {tag, val} command error would trap
      // the instance and fault the session: report it as `failed` instead.
      if (e && typeof e === "object" && "tag" in e) throw e;
      throw failed(`js-notes bug: ${e}`);
    }
  },
  tick() {
    emit({ name: "tick", payload: utf8(String(notes.size)) });
  },
  close() {},
};
