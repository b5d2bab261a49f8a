// A Node client for the gatehouse session gateway.
//
//   const client = new Client("127.0.0.1:50051", { apiKey: "ghk_..." });
//   await client.withSession("echo", { keepAlive: true }, async (session) => {
//     await session.invoke("echo", "hi");
//     for await (const event of session.events()) { ... }
//   });
//
// The generated messages and service are re-exported as `pb`.

export { CallOptions, Client, ClientOptions, CommandLike, Events, OpenOptions, Payload, SESSION_HEADER, Session } from "./client";
export { CommandError, CommandErrorKind, GatehouseError, GatewayError, retryDelayMs } from "./errors";
export * as pb from "./gen/gatehouse/v1/gateway";
export { status } from "@grpc/grpc-js";
