"""py-notes: a gatehouse backend written in Python (componentize-py).

Each session keeps its own list of notes:
  add {"text": T}  -> the new note's id; emits an `added` event
  list             -> the notes as a JSON array of {"id", "text"}
  remove {"id": N} -> removes a note (a `failed` error if there is none)
  whoami           -> JSON with the session id, tenant and backend
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


class Session(exports.Session):
    def __init__(self):
        self.ctx = None
        self.notes = {}
        self.next_id = 1

    def open(self, ctx: types.SessionContext) -> None:
        self.ctx = ctx

    def handle(self, cmd: types.Command) -> bytes:
        if cmd.name == "add":
            body = _json(cmd.payload)
            if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                raise Err(types.CommandError_InvalidPayload('expected {"text": "..."}'))
            note_id = self.next_id
            self.next_id += 1
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
