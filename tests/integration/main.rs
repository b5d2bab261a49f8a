//! Black-box integration tests: the real binary over real gRPC.

mod ops;
