// Typed errors. A CommandError is a plugin's answer (the call succeeded and
// the session is still READY); a GatewayError is a failed call, a gRPC
// status, with the google.rpc.RetryInfo delay when the gateway sent one.

import { Metadata, status as Status } from "@grpc/grpc-js";
import { BinaryReader } from "@bufbuild/protobuf/wire";

import { CommandError as CommandErrorMessage, CommandError_Kind } from "./gen/gatehouse/v1/gateway";

/** Anything this client throws about a call. */
export class GatehouseError extends Error {}

/** Which `command-error` case the plugin returned. */
export type CommandErrorKind = "unspecified" | "unknown-command" | "invalid-payload" | "failed";

const KINDS: Record<number, CommandErrorKind> = {
  [CommandError_Kind.KIND_UNKNOWN_COMMAND]: "unknown-command",
  [CommandError_Kind.KIND_INVALID_PAYLOAD]: "invalid-payload",
  [CommandError_Kind.KIND_FAILED]: "failed",
};

/** A command the plugin refused or failed; the session stays usable. */
export class CommandError extends GatehouseError {
  constructor(
    readonly kind: CommandErrorKind,
    readonly detail: string,
  ) {
    super(`${kind}: ${detail}`);
    this.name = "CommandError";
  }

  /** From a `gatehouse.v1.CommandError` message. */
  static fromMessage(m: CommandErrorMessage): CommandError {
    return new CommandError(KINDS[m.kind] ?? "unspecified", m.message);
  }
}

/** The gateway answered a call with a non-OK gRPC status. */
export class GatewayError extends GatehouseError {
  constructor(
    /** The gRPC status code (`status.NOT_FOUND`, ...). */
    readonly code: Status,
    readonly detail: string,
    /** Milliseconds to wait before trying again (google.rpc.RetryInfo), if the gateway said. */
    readonly retryDelayMs: number | undefined,
  ) {
    super(`${Status[code] ?? code}: ${detail}`);
    this.name = "GatewayError";
  }

  /** NOT_FOUND: no such session (or one of another tenant), or backend. */
  get notFound(): boolean {
    return this.code === Status.NOT_FOUND;
  }

  /** RESOURCE_EXHAUSTED: a cap, quota or rate; see `retryDelayMs`. */
  get resourceExhausted(): boolean {
    return this.code === Status.RESOURCE_EXHAUSTED;
  }
}

const RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo";

/** Reads the length-delimited fields `wanted` of a message, by number. */
function fields(bytes: Uint8Array, wanted: number): Uint8Array[] {
  const r = new BinaryReader(bytes);
  const out: Uint8Array[] = [];
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (no === wanted && type === 2) out.push(r.bytes());
    else r.skip(type);
  }
  return out;
}

/** The RetryInfo delay in a `grpc-status-details-bin` google.rpc.Status. */
export function retryDelayMs(trailers: Metadata | undefined): number | undefined {
  const raw = trailers?.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Uint8Array)) return undefined;
  try {
    // Status.details (3) are Any: type_url (1), value (2).
    for (const any of fields(raw, 3)) {
      const url = fields(any, 1)[0];
      if (!url || Buffer.from(url).toString() !== RETRY_INFO) continue;
      const info = fields(any, 2)[0] ?? new Uint8Array();
      // RetryInfo.retry_delay (1) is a Duration: seconds (1), nanos (2).
      const duration = fields(info, 1)[0] ?? new Uint8Array();
      const r = new BinaryReader(duration);
      let seconds = 0;
      let nanos = 0;
      while (r.pos < r.len) {
        const [no, type] = r.tag();
        if (no === 1) seconds = Number(r.int64());
        else if (no === 2) nanos = r.int32();
        else r.skip(type);
      }
      return seconds * 1000 + nanos / 1e6;
    }
  } catch {
    // A malformed trailer is no retry hint.
  }
  return undefined;
}

/** The typed error for a failed call. */
export function fromServiceError(e: unknown): GatewayError {
  const err = e as { code?: number; details?: string; message?: string; metadata?: Metadata };
  if (typeof err?.code !== "number") {
    return new GatewayError(Status.UNKNOWN, String(err?.message ?? e), undefined);
  }
  return new GatewayError(err.code, err.details ?? err.message ?? "", retryDelayMs(err.metadata));
}
