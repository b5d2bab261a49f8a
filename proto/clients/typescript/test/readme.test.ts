// The README's example: the file it shows runs as written against a real
// gateway (node, importing the package by its name), and the README shows
// exactly that file.

import { after, before, test } from "node:test";
import * as assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { promisify } from "node:util";

import { Gateway } from "./gateway";

/** The package's directory (this file runs from dist/test/). */
const PACKAGE = path.resolve(__dirname, "../..");
const EXAMPLE = path.join(PACKAGE, "examples", "readme.mjs");

let gw: Gateway;
before(async () => {
  gw = await Gateway.plain();
});
after(async () => {
  await gw.stop();
});

test("the README shows the example file", () => {
  const readme = fs.readFileSync(path.join(PACKAGE, "README.md"), "utf8");
  const example = fs.readFileSync(EXAMPLE, "utf8");
  assert.ok(readme.includes("```js\n" + example + "```\n"), "README.md's example is not examples/readme.mjs as it is");
});

test("the README example runs as written", async () => {
  const env: NodeJS.ProcessEnv = { ...process.env, GATEHOUSE_ADDR: gw.addr };
  delete env.GATEHOUSE_KEY;
  const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE], { cwd: PACKAGE, env, timeout: 120_000 });
  const lines = stdout.trim().split("\n");
  assert.ok(lines[0].split(" ").includes("echo"), stdout);
  assert.deepEqual(lines.slice(1, 4), ["one-off", "hello", "1 x"], stdout);
  assert.match(lines[4], /^unknown-command /, stdout);
  assert.equal(lines[5], "true", stdout);
  assert.match(lines[lines.length - 1], /^5 tick/, stdout);
});
