// The TypeScript client against real gateways (node --test).

import { after, before, describe, test } from "node:test";
import * as assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";

import { Client, CommandError, GatewayError, SESSION_HEADER, Session, pb, status } from "../src";
import { API_KEY, Gateway } from "./gateway";

const text = (b: Uint8Array) => Buffer.from(b).toString();

describe("against a gateway", () => {
  let gw: Gateway;
  let client: Client;
  before(async () => {
    gw = await Gateway.plain();
    client = new Client(gw.addr, { timeoutMs: 30_000 });
  });
  after(async () => {
    client.close();
    await gw.stop();
  });

  test("lists the default backends", async () => {
    const names = (await client.listBackends()).map((b) => b.name);
    for (const n of ["echo", "kv", "sim-device"]) assert.ok(names.includes(n), n);
  });

  test("a call runs on a fresh instance and leaves no session", async () => {
    const ids = async () => (await client.listSessions()).map((s) => s.sessionId).sort();
    const before = await ids();
    assert.equal(text(await client.call("echo", "echo", "hi")), "hi");
    // Each call has an instance of its own.
    assert.deepEqual([text(await client.call("echo", "count")), text(await client.call("echo", "count"))], ["1", "1"]);
    await assert.rejects(client.call("echo", "nope", "", { commandTimeoutMs: 5000 }), CommandError);
    await assert.rejects(client.call("no-such-backend", "echo"), (e: GatewayError) => e.code === status.NOT_FOUND);
    // No session was created, not even a closed one.
    assert.deepEqual(await ids(), before);
  });

  test("open, invoke, close", async () => {
    const s = await client.open("echo", { name: "ts", correlationId: "row-7" });
    assert.equal(s.info.state, pb.SessionState.SESSION_STATE_READY);
    assert.equal(s.info.clientSessionName, "ts");
    assert.deepEqual([text(await s.invoke("count")), text(await s.invoke("count"))], ["1", "2"]);
    assert.equal(text(await s.invoke("echo", "héllo")), "héllo");
    assert.equal((await s.refresh()).clientCorrelationId, "row-7");
    const first = await s.close();
    assert.equal(first.finalState, pb.SessionState.SESSION_STATE_CLOSED);
    assert.equal(first.alreadyClosed, false);
    assert.equal((await s.close()).alreadyClosed, true);
  });

  test("withSession closes the session whatever the body does", async () => {
    let id = "";
    await assert.rejects(
      client.withSession("echo", {}, async (s) => {
        id = s.id;
        throw new Error("the body failed");
      }),
      /the body failed/,
    );
    const info = (await client.listSessions()).find((i) => i.sessionId === id);
    assert.ok(!info || info.state === pb.SessionState.SESSION_STATE_CLOSED, JSON.stringify(info));
  });

  test("a command error is not a gateway error", async () => {
    await client.withSession("echo", {}, async (s) => {
      await assert.rejects(s.invoke("nope"), (e: unknown) => {
        assert.ok(e instanceof CommandError && !(e instanceof GatewayError));
        assert.equal(e.kind, "unknown-command");
        return true;
      });
      await assert.rejects(s.invoke("emit", "many"), (e: CommandError) => e.kind === "invalid-payload");
      assert.equal(text(await s.invoke("count")), "1");
    });
  });

  test("batch returns each outcome in order", async () => {
    await client.withSession("echo", {}, async (s) => {
      const out = await s.batch(["count", ["echo", "x"], ["nope", ""], "count"]);
      assert.equal(text(out[0] as Uint8Array), "1");
      assert.equal(text(out[1] as Uint8Array), "x");
      assert.ok(out[2] instanceof CommandError && out[2].kind === "unknown-command");
      assert.equal(text(out[3] as Uint8Array), "2");
    });
  });

  test("events resume across streams the gateway ends", async () => {
    // Ticks for 1.2s; the gateway ends each stream after 400ms.
    await client.withSession("echo", {}, async (s) => {
      await s.invoke("ticks", "100,12");
      const events = s.events();
      const seqs: number[] = [];
      for await (const e of events) {
        assert.equal(e.name, "tick");
        seqs.push(e.sequence);
        if (seqs.length === 12) break;
      }
      assert.deepEqual(seqs, Array.from({ length: 12 }, (_, i) => i + 1));
      assert.ok(events.resumes >= 1, "the stream should have been ended at least once");
    });
  });

  test("events replay after a sequence", async () => {
    await client.withSession("echo", {}, async (s) => {
      await s.invoke("emit", "5");
      const seqs: number[] = [];
      for await (const e of s.events({ after: 3 })) {
        seqs.push(e.sequence);
        if (seqs.length === 2) break;
      }
      assert.deepEqual(seqs, [4, 5]);
    });
  });

  test("renew moves the lease on, keep-alive outlives it", async () => {
    await client.withSession("echo", { leaseMs: 1000, keepAlive: true, keepAliveIntervalMs: 200 }, async (s) => {
      const before = s.info.leaseExpiresAt!.getTime();
      await new Promise((r) => setTimeout(r, 50));
      assert.ok((await s.renew()).leaseExpiresAt!.getTime() > before);
      await new Promise((r) => setTimeout(r, 2500));
      const mine = (await client.listSessions()).find((i) => i.sessionId === s.id);
      assert.equal(mine?.state, pb.SessionState.SESSION_STATE_READY);
      assert.equal(s.keepAliveError, undefined);
    });
  });

  test("an unknown session is NOT_FOUND", async () => {
    await assert.rejects(client.session("no-such-session"), (e: unknown) => {
      assert.ok(e instanceof GatewayError);
      assert.equal(e.code, status.NOT_FOUND);
      assert.ok(e.notFound);
      assert.equal(e.retryDelayMs, undefined);
      return true;
    });
  });
});

describe("with API keys", () => {
  let gw: Gateway;
  before(async () => {
    gw = await Gateway.keyed();
  });
  after(() => gw.stop());

  test("the quota is RESOURCE_EXHAUSTED with a retry delay", async () => {
    const c = new Client(gw.addr, { apiKey: API_KEY, timeoutMs: 30_000 });
    try {
      await c.withSession("echo", {}, async (s) => {
        assert.ok(text(await s.invoke("whoami")).includes('"tenant":"ts"'));
        await assert.rejects(c.open("echo"), (e: unknown) => {
          assert.ok(e instanceof GatewayError && e.resourceExhausted, String(e));
          assert.ok(e.retryDelayMs !== undefined && e.retryDelayMs > 0, String(e.retryDelayMs));
          return true;
        });
      });
    } finally {
      c.close();
    }
  });

  test("a missing or wrong key is UNAUTHENTICATED", async () => {
    for (const apiKey of [undefined, "ghk_wrong"]) {
      const c = new Client(gw.addr, { apiKey, timeoutMs: 30_000 });
      await assert.rejects(c.listBackends(), (e: GatewayError) => e.code === status.UNAUTHENTICATED);
      c.close();
    }
  });
});

test("every call naming a session carries its id", async () => {
  // A stand-in gateway that records each call's metadata.
  const seen = new Map<string, grpc.Metadata>();
  const server = new grpc.Server();
  const impl: grpc.UntypedServiceImplementation = {};
  for (const [name, def] of Object.entries(pb.GatewayService)) {
    impl[name] = def.responseStream
      ? (call: grpc.ServerWritableStream<unknown, unknown>) => {
          seen.set(name, call.metadata);
          call.end();
        }
      : (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
          seen.set(name, call.metadata);
          cb(null, (def as { responseDeserialize: (b: Buffer) => unknown }).responseDeserialize(Buffer.alloc(0)));
        };
  }
  server.addService(pb.GatewayService, impl);
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const c = new Client(`127.0.0.1:${port}`, { apiKey: "k", timeoutMs: 10_000 });
  try {
    const s = new Session(c, pb.SessionInfo.fromPartial({ sessionId: "s-1" }));
    await s.invoke("x");
    await s.batch(["x"]);
    for await (const _ of s.events({ resume: false })) break;
    await s.renew();
    await s.refresh();
    await s.close();
    await c.listBackends();
  } finally {
    c.close();
    server.forceShutdown();
  }
  for (const m of ["invoke", "invokeBatch", "streamEvents", "renewLease", "getSession", "closeSession"]) {
    assert.deepEqual(seen.get(m)?.get(SESSION_HEADER), ["s-1"], m);
    assert.deepEqual(seen.get(m)?.get("authorization"), ["Bearer k"], m);
  }
  assert.deepEqual(seen.get("listBackends")?.get(SESSION_HEADER), []);
});
