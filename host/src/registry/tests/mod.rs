//! Registry behaviour with a fake backend and a hand-driven clock: leases,
//! timeouts, the cap, rollback and close, without sleeping.

mod close;
mod fixtures;
mod fuzz;
mod leases;
mod open;
mod rates;
mod tenants;
mod versions;
