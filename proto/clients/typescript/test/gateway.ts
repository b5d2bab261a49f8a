// Real gateways for the tests, started from the binary the workspace builds:
// $GATEHOUSE_BIN, or debug/gatehouse under $CARGO_TARGET_DIR or the
// repository's target/ (run `cargo build` first).

import { ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";

/** The repository root (this file runs from dist/test/). */
export const ROOT = path.resolve(__dirname, "../../../../..");

/** The key the keyed gateway's tenant `ts` accepts. */
export const API_KEY = "ghk_typescript_client_tests";

function binary(): string {
  if (process.env.GATEHOUSE_BIN) return process.env.GATEHOUSE_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
  const bin = path.join(target, "debug", "gatehouse");
  if (!fs.existsSync(bin)) throw new Error(`${bin} does not exist: run \`cargo build\` (or set GATEHOUSE_BIN)`);
  return bin;
}

/** One `gatehouse serve` on a free loopback port. */
export class Gateway {
  private constructor(
    readonly addr: string,
    private readonly proc: ChildProcess,
    readonly dir: string,
  ) {}

  static start(config: string): Promise<Gateway> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "gatehouse-ts-"));
    const file = path.join(dir, "gatehouse.toml");
    fs.writeFileSync(file, config);
    const env: NodeJS.ProcessEnv = { ...process.env, RUST_LOG: "info" };
    delete env.GATEHOUSE_ADDR;
    delete env.GATEHOUSE_KEY;
    // A key store of its own: another gateway's keys (which end local
    // development mode) or newer schema never reach a test gateway.
    env.XDG_DATA_HOME = dir;
    const stderr = fs.openSync(path.join(dir, "stderr.log"), "w");
    const proc = spawn(
      binary(),
      ["serve", "--config", file, "--listen", "127.0.0.1:0", "--metrics-listen", "off"],
      { stdio: ["ignore", "pipe", stderr], env },
    );
    return new Promise((resolve, reject) => {
      let seen = "";
      const onData = (chunk: Buffer) => {
        seen += chunk.toString();
        const m = /grpc=(\S+)/.exec(seen);
        if (m) {
          // Keep draining stdout so the gateway never blocks on it.
          resolve(new Gateway(m[1], proc, dir));
        }
      };
      proc.stdout!.on("data", onData);
      proc.on("exit", (code) =>
        reject(new Error(`the gateway exited (${code}):\n${fs.readFileSync(path.join(dir, "stderr.log"), "utf8")}`)),
      );
    });
  }

  /** Local development mode, default backends, streams ended after 400ms. */
  static plain(): Promise<Gateway> {
    return Gateway.start('[server]\nmax_event_stream_age = "400ms"\n');
  }

  /** API keys: tenant `ts` (key API_KEY) may hold one session at a time. */
  static keyed(): Promise<Gateway> {
    const hash = createHash("sha256").update(API_KEY).digest("hex");
    return Gateway.start(
      `[[tenants]]\nname = "ts"\nmax_sessions = 1\n[[tenants.keys]]\nhash = "sha256:${hash}"\n` +
        `scopes = ["sessions:open", "sessions:use", "sessions:read", "backends:read"]\n`,
    );
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      if (this.proc.exitCode !== null) return resolve();
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 20_000);
      this.proc.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
      this.proc.kill("SIGTERM");
    });
  }
}
