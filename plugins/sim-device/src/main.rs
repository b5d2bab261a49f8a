//! The sim-device worker as a program of its own; `gatehouse worker
//! sim-device` runs the same code from inside the gateway's binary.

fn main() -> std::process::ExitCode {
    gatehouse_sim_device::main()
}
