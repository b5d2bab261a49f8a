//! Host bindings for the `gatehouse:backend` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "backend",
    // Host functions are synchronous (no await inside) but may trap the
    // guest, e.g. when it overflows its event queue.
    imports: { default: trappable },
    exports: { default: async },
});
