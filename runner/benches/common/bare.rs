//! The capsule world's bindings for a bare wasmtime embedding (no runner),
//! shared by the benchmarks that compare the runner with one.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "capsule",
    imports: { default: async },
    exports: { default: async },
    with: { "wasi:http": wasmtime_wasi_http::p2::bindings::http, "wasi": wasmtime_wasi::p2::bindings },
});
