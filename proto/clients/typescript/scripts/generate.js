// Generates src/gen/ from proto/gatehouse/v1/gateway.proto with ts-proto.
//
// buf (from npm, its compiler shipped in @bufbuild/buf-<platform>) parses
// the proto and runs the local protoc-gen-ts_proto plugin: no protoc to
// download. The proto is copied into a scratch directory first, so buf
// sees that one file (and its built-in google/protobuf imports) rather
// than every .proto under proto/, node_modules included.
"use strict";

const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const here = path.resolve(__dirname, "..");
const protoRoot = process.env.GATEHOUSE_PROTO_DIR || path.resolve(here, "../..");
const proto = "gatehouse/v1/gateway.proto";
const bin = (name) => path.join(here, "node_modules", ".bin", name);

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "gatehouse-ts-"));
try {
  fs.mkdirSync(path.join(scratch, path.dirname(proto)), { recursive: true });
  fs.copyFileSync(path.join(protoRoot, proto), path.join(scratch, proto));
  const out = path.join(here, "src", "gen");
  fs.rmSync(out, { recursive: true, force: true });
  const template = {
    version: "v2",
    plugins: [
      {
        local: bin("protoc-gen-ts_proto"),
        out,
        opt: ["outputServices=grpc-js", "env=node", "esModuleInterop=true", "useExactTypes=false"],
      },
    ],
  };
  execFileSync(bin("buf"), ["generate", scratch, "--template", JSON.stringify(template)], {
    stdio: "inherit",
  });
  console.log(`generated ${path.relative(here, out)} from ${path.join(protoRoot, proto)}`);
} finally {
  fs.rmSync(scratch, { recursive: true, force: true });
}
