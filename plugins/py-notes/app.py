"""py-notes: a gatehouse backend written in Python (componentize-py).

Each session keeps its own list of notes:
  add {"text": T}  -> the new note's id; emits an `added` event
  list             -> the notes as a JSON array of {"id", "text"}
  remove {"id": N} -> removes a note (a `failed` error if there is none)
  whoami           -> JSON with the session id, tenant and backend

The notes are the session's state: the component targets the
`stateful-backend` world, so they survive a restart or an upgrade
(`State.snapshot` / `State.restore`, format 1 below).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types


def _json(payload: bytes):
    try:
        return json.loads(payload)
    except ValueError as e:
        raise Err(types.CommandError_InvalidPayload(f"bad JSON: {e}"))


# The session's state, at module level: one instance serves one session,
# and `Session` and `State` are separate export objects that both use it.
_notes = {}
_next = {"id": 1}

# The snapshot format; read every older one when it changes.
STATE_FORMAT = 1


class Session(exports.Session):
    def __init__(self):
        self.ctx = None
        self.notes = _notes

    def open(self, ctx: types.SessionContext) -> None:
        self.ctx = ctx

    def handle(self, cmd: types.Command) -> bytes:
        if cmd.name == "add":
            body = _json(cmd.payload)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise Err(types.CommandError_InvalidPayload('expected {"text": "..."}'))
            note_id = _next["id"]
            _next["id"] += 1
            self.notes[note_id] = body["text"]
            host.emit(types.Event("added", str(note_id).encode()))
            return str(note_id).encode()
        if cmd.name == "list":
            notes = [{"id": i, "text": t} for i, t in sorted(self.notes.items())]
            return json.dumps(notes).encode()
        if cmd.name == "remove":
            body = _json(cmd.payload)
            note_id = body.get("id") if isinstance(body, dict) else None
            if note_id not in self.notes:
                raise Err(types.CommandError_Failed(f"no note {note_id!r}"))
            del self.notes[note_id]
            return b""
        if cmd.name == "whoami":
            return json.dumps({
                "session_id": self.ctx.session_id,
                "tenant": self.ctx.tenant,
                "backend": self.ctx.backend,
            }).encode()
        raise Err(types.CommandError_UnknownCommand(f"py-notes has no command {cmd.name!r}"))

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass


class State(exports.State):
    def snapshot(self) -> bytes:
        return json.dumps({
            "format": STATE_FORMAT,
            "next_id": _next["id"],
            "notes": [[i, t] for i, t in sorted(_notes.items())],
        }).encode()

    def restore(self, state: bytes, from_version: str) -> None:
        try:
            data = json.loads(state)
        except ValueError as e:
            raise Err(f"unreadable state from version {from_version}: {e}")
        if data.get("format") != STATE_FORMAT:
            raise Err(f"state format {data.get('format')!r} from version {from_version} is not {STATE_FORMAT}")
        _notes.clear()
        _notes.update({int(i): t for i, t in data["notes"]})
        _next["id"] = int(data["next_id"])
