// The client: Client, Session and Events, with the same shape as the
// Python package (proto/clients/python), in promises and async iterators.

import { ChannelCredentials, ClientReadableStream, Metadata, credentials, status } from "@grpc/grpc-js";

import {
  BackendInfo,
  CloseSessionResponse,
  Command,
  Event,
  GatewayClient,
  OpenSessionRequest,
  SessionInfo,
} from "./gen/gatehouse/v1/gateway";
import { Duration } from "./gen/google/protobuf/duration";
import { CommandError, GatewayError, fromServiceError } from "./errors";

/** The metadata naming the session a call is about, sent on every call that
 * names one, so a proxy or a cluster of gateways can route it. */
export const SESSION_HEADER = "x-gatehouse-session";

/** Status codes after which an event stream is resumed: the gateway ended
 * it (`max_event_stream_age`), the connection broke, or the old stream is
 * not yet detached right after a break. */
const RESUMABLE = new Set<number>([status.UNAVAILABLE, status.ALREADY_EXISTS, status.INTERNAL, status.UNKNOWN]);

/** A payload: bytes, or text sent as UTF-8. */
export type Payload = Uint8Array | string;

/** A command: its name, or [name, payload]. */
export type CommandLike = string | [string, Payload];

/** How to reach a gateway. */
export interface ClientOptions {
  /** Sent as `authorization: Bearer <key>` on every call. */
  apiKey?: string;
  /** PEM of the CA to trust: connect over TLS. */
  caCert?: Uint8Array;
  /** PEM client certificate and key, for mutual TLS. */
  clientCert?: Uint8Array;
  clientKey?: Uint8Array;
  /** The TLS name to check instead of the target's host. */
  serverName?: string;
  /** Bounds each unary call, in milliseconds; streams are unbounded. */
  timeoutMs?: number;
}

/** What to open a session with; unset durations take the backend's defaults. */
/** Options of a one-shot `Client.call`. */
export interface CallOptions {
  commandTimeoutMs?: number;
  config?: Record<string, string>;
}

export interface OpenOptions {
  name?: string;
  correlationId?: string;
  commandTimeoutMs?: number;
  leaseMs?: number;
  config?: Record<string, string>;
  /** Renew the lease in the background until the session closes. */
  keepAlive?: boolean;
  /** Milliseconds between renewals; a third of the lease by default. */
  keepAliveIntervalMs?: number;
}

const bytes = (p: Payload): Buffer =>
  typeof p === "string" ? Buffer.from(p, "utf8") : Buffer.from(p.buffer, p.byteOffset, p.byteLength);
const duration = (ms: number): Duration => ({
  seconds: Math.floor(ms / 1000),
  nanos: Math.round((ms % 1000) * 1e6),
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Unary<Req, Res> = (
  req: Req,
  md: Metadata,
  opts: { deadline?: Date },
  cb: (err: unknown, res: Res) => void,
) => unknown;

/** A connection to one gateway. */
export class Client {
  readonly stub: GatewayClient;

  constructor(
    target = "127.0.0.1:50051",
    readonly options: ClientOptions = {},
  ) {
    const creds: ChannelCredentials =
      options.caCert || options.clientCert
        ? credentials.createSsl(
            options.caCert ? Buffer.from(options.caCert) : null,
            options.clientKey ? Buffer.from(options.clientKey) : null,
            options.clientCert ? Buffer.from(options.clientCert) : null,
          )
        : credentials.createInsecure();
    const channel = options.serverName ? { "grpc.ssl_target_name_override": options.serverName } : {};
    this.stub = new GatewayClient(target, creds, channel);
  }

  /** The call's metadata: the API key, and the session it names. */
  metadata(sessionId?: string): Metadata {
    const md = new Metadata();
    if (this.options.apiKey) md.set("authorization", `Bearer ${this.options.apiKey}`);
    if (sessionId) md.set(SESSION_HEADER, sessionId);
    return md;
  }

  /** Runs one unary call; a failure is a GatewayError. */
  unary<Req, Res>(method: Unary<Req, Res>, req: Req, sessionId?: string): Promise<Res> {
    const timeout = this.options.timeoutMs;
    const opts = timeout === undefined ? {} : { deadline: new Date(Date.now() + timeout) };
    return new Promise((resolve, reject) => {
      method.call(this.stub, req, this.metadata(sessionId), opts, (err: unknown, res: Res) =>
        err ? reject(fromServiceError(err)) : resolve(res),
      );
    });
  }

  /** The backends this caller may open, every loaded version. */
  async listBackends(): Promise<BackendInfo[]> {
    return (await this.unary(this.stub.listBackends, {})).backends;
  }

  /** Opens a session and resolves once it is READY. */
  async open(backend: string, opts: OpenOptions = {}): Promise<Session> {
    const req: OpenSessionRequest = {
      backend,
      clientSessionName: opts.name ?? "",
      clientCorrelationId: opts.correlationId ?? "",
      commandTimeout: opts.commandTimeoutMs === undefined ? undefined : duration(opts.commandTimeoutMs),
      lease: opts.leaseMs === undefined ? undefined : duration(opts.leaseMs),
      config: opts.config ?? {},
    };
    const info = (await this.unary(this.stub.openSession, req)).session;
    if (!info) throw new GatewayError(status.INTERNAL, "OpenSession returned no session", undefined);
    const session = new Session(this, info);
    if (opts.keepAlive) session.keepAlive(opts.keepAliveIntervalMs);
    return session;
  }

  /** Runs one command on a fresh instance of `backend` that is dropped
   * afterwards: open, invoke and close in one round trip, with no session
   * left behind (its events are dropped). Throws CommandError if the plugin
   * refused the command. */
  async call(backend: string, name: string, payload: Payload = "", opts: CallOptions = {}): Promise<Uint8Array> {
    const reply = await this.unary(this.stub.call, {
      backend,
      config: opts.config ?? {},
      command: { name, payload: bytes(payload) },
      commandTimeout: opts.commandTimeoutMs === undefined ? undefined : duration(opts.commandTimeoutMs),
    });
    if (reply.error) throw CommandError.fromMessage(reply.error);
    return reply.payload;
  }

  /** Opens a session, runs `body` with it and closes it, whatever `body` does
   * (the `with` block of the Python client). */
  async withSession<T>(backend: string, opts: OpenOptions, body: (s: Session) => Promise<T>): Promise<T> {
    const session = await this.open(backend, opts);
    try {
      return await body(session);
    } finally {
      await session.close().catch((e) => {
        if (!(e instanceof GatewayError && e.notFound)) throw e;
      });
    }
  }

  /** A handle on an existing session (NOT_FOUND if there is none). */
  async session(sessionId: string): Promise<Session> {
    return new Session(this, await this.unary(this.stub.getSession, { sessionId }, sessionId));
  }

  /** The caller's sessions (every session, for an admin key). */
  async listSessions(): Promise<SessionInfo[]> {
    return (await this.unary(this.stub.listSessions, {})).sessions;
  }

  /** Closes the channel (not the sessions: they live until their lease ends). */
  close(): void {
    this.stub.close();
  }
}

/** One open session. */
export class Session {
  readonly id: string;
  /** The last error the keep-alive renewal met, if any. */
  keepAliveError: GatewayError | undefined;
  private renewer: NodeJS.Timeout | undefined;

  constructor(
    readonly client: Client,
    /** The session as last described by the gateway. */
    public info: SessionInfo,
  ) {
    this.id = info.sessionId;
  }

  /** Runs one command; rejects with CommandError if the plugin refused it
   * (the session stays READY) or GatewayError. */
  async invoke(name: string, payload: Payload = "", correlationId = ""): Promise<Uint8Array> {
    const reply = await this.client.unary(
      this.client.stub.invoke,
      { sessionId: this.id, command: { name, payload: bytes(payload) }, correlationId },
      this.id,
    );
    if (reply.error) throw CommandError.fromMessage(reply.error);
    return reply.payload;
  }

  /** Runs commands in order in one round trip: one reply or CommandError
   * per command (errors are returned, not thrown). */
  async batch(commands: CommandLike[]): Promise<(Uint8Array | CommandError)[]> {
    const list: Command[] = commands.map((c) =>
      typeof c === "string" ? { name: c, payload: Buffer.alloc(0) } : { name: c[0], payload: bytes(c[1]) },
    );
    const reply = await this.client.unary(this.client.stub.invokeBatch, { sessionId: this.id, commands: list }, this.id);
    return reply.results.map((r) => (r.error ? CommandError.fromMessage(r.error) : r.payload));
  }

  /** The session's events; `after` replays from the sequence after it. With
   * `resume` (the default), a stream the gateway ends or a broken connection
   * is reopened after the last sequence seen. */
  events(opts: { after?: number; resume?: boolean; maxRetries?: number } = {}): Events {
    return new Events(this, opts.after, opts.resume ?? true, opts.maxRetries ?? 20);
  }

  /** Extends the lease by its duration from now. */
  async renew(): Promise<SessionInfo> {
    this.info = await this.client.unary(this.client.stub.renewLease, { sessionId: this.id }, this.id);
    return this.info;
  }

  /** Describes the session anew. */
  async refresh(): Promise<SessionInfo> {
    this.info = await this.client.unary(this.client.stub.getSession, { sessionId: this.id }, this.id);
    return this.info;
  }

  /** Renews the lease every `intervalMs` (a third of the lease by default)
   * until `close`; it stops by itself once the session is gone. The timer
   * does not keep the process alive. */
  keepAlive(intervalMs?: number): this {
    if (this.renewer) return this;
    const lease = this.info.lease;
    const leaseMs = lease ? lease.seconds * 1000 + lease.nanos / 1e6 : 60_000;
    const every = intervalMs ?? Math.max(leaseMs / 3, 50);
    this.renewer = setInterval(() => {
      this.renew().then(
        () => (this.keepAliveError = undefined),
        (e: GatewayError) => {
          this.keepAliveError = e;
          if (e.notFound) this.stopKeepAlive();
        },
      );
    }, every);
    this.renewer.unref();
    return this;
  }

  private stopKeepAlive(): void {
    if (this.renewer) clearInterval(this.renewer);
    this.renewer = undefined;
  }

  /** Closes the session (idempotent while the gateway still knows it). */
  async close(): Promise<CloseSessionResponse> {
    this.stopKeepAlive();
    return this.client.unary(this.client.stub.closeSession, { sessionId: this.id }, this.id);
  }
}

/** An async iterator over a session's events that resumes after a broken
 * stream from the last sequence it returned. `cancel()` (or `break` out of
 * `for await`) ends it; it also ends when the session closes. */
export class Events implements AsyncIterableIterator<Event> {
  /** The sequence of the last event returned (or the `after` given). */
  lastSequence: number | undefined;
  /** How many times the stream was reopened. */
  resumes = 0;
  private call: ClientReadableStream<Event> | undefined;
  private iter: AsyncIterator<Event> | undefined;
  private cancelled = false;

  constructor(
    readonly session: Session,
    after: number | undefined,
    private readonly resume: boolean,
    private readonly maxRetries: number,
  ) {
    this.lastSequence = after;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<Event>> {
    let failures = 0;
    for (;;) {
      if (this.cancelled) return { done: true, value: undefined };
      if (!this.iter) {
        const c = this.session.client;
        this.call = c.stub.streamEvents(
          { sessionId: this.session.id, resumeAfterSequence: this.lastSequence },
          c.metadata(this.session.id),
        );
        this.iter = this.call[Symbol.asyncIterator]() as AsyncIterator<Event>;
      }
      try {
        const r = await this.iter.next();
        if (r.done) {
          this.iter = undefined;
          return { done: true, value: undefined };
        }
        this.lastSequence = r.value.sequence;
        return r;
      } catch (e) {
        this.iter = undefined;
        this.call = undefined;
        if (this.cancelled) return { done: true, value: undefined };
        const code = (e as { code?: number }).code;
        if (this.resume && code !== undefined && RESUMABLE.has(code) && failures < this.maxRetries) {
          failures += 1;
          this.resumes += 1;
          await sleep(Math.min(20 * failures, 1000));
          continue;
        }
        throw fromServiceError(e);
      }
    }
  }

  async return(): Promise<IteratorResult<Event>> {
    this.cancel();
    return { done: true, value: undefined };
  }

  /** Ends the stream. */
  cancel(): void {
    this.cancelled = true;
    this.call?.cancel();
  }
}
