// The README's example, run as written by the tests (test/readme.test.ts)
// against a real gateway: GATEHOUSE_ADDR names it, GATEHOUSE_KEY the API key
// if it needs one. An ES module (.mjs): the package is CommonJS, and
// `import` and top-level `await` need a module.
import { Client, CommandError } from "@gatehouse/client";

const text = (bytes) => Buffer.from(bytes).toString();
const client = new Client(process.env.GATEHOUSE_ADDR ?? "127.0.0.1:50051", {
  apiKey: process.env.GATEHOUSE_KEY, // unset: a gateway in local development mode
  timeoutMs: 30_000,
});
console.log((await client.listBackends()).map((b) => b.name).join(" "));
// One command on a fresh instance, dropped afterwards: no session is left.
console.log(text(await client.call("echo", "echo", "one-off")));          // one-off
await client.withSession("echo", { leaseMs: 60_000, keepAlive: true }, async (session) => {
  console.log(text(await session.invoke("echo", "hello")));              // hello
  console.log((await session.batch(["count", ["echo", "x"]])).map(text).join(" ")); // 1 x
  try {
    await session.invoke("nope");
  } catch (e) {
    if (e instanceof CommandError) console.log(e.kind, e.detail);       // the session is still READY
  }
  const again = await client.session(session.id);                        // a handle on it by id
  console.log(again.info.state === session.info.state);                  // true
  console.log((await client.listSessions()).map((s) => s.sessionId).join(" "));
  await session.invoke("ticks", "100,5");
  for await (const event of session.events()) {                          // resumes after a broken stream
    console.log(event.sequence, event.name, text(event.payload));
    if (event.sequence === 5) break;                                     // break cancels the stream
  }
});
client.close();
