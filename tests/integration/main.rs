//! Black-box tests: the real `gatehouse` binary over real gRPC.

mod native;
