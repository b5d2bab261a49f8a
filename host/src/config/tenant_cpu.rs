//! A tenant's CPU settings (`[[tenants]]` `cpu_weight`,
//! `max_concurrent_commands`, `max_cpu_per_sec`, `cpu_burst`): read here,
//! spent by the scheduler in `backend/cpu`.

use super::{ConfigError, invalid};

/// Largest `cpu_weight`.
pub const MAX_CPU_WEIGHT: u32 = 1000;

/// Largest `max_cpu_per_sec` and `cpu_burst`, in CPU-ms: an hour of one core.
pub const MAX_CPU_MS: f64 = 3_600_000.0;

/// A tenant's CPU settings (`cpu_weight`, `max_concurrent_commands`,
/// `max_cpu_per_sec`, `cpu_burst`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantCpuSpec {
    /// Its share of contended wasm runtime threads, against the others'.
    pub weight: u32,
    /// Its wasm commands and ticks running at once; `None`: no cap of its own.
    pub max_concurrent_commands: Option<usize>,
    /// Its CPU budget; `None`: unlimited.
    pub budget: Option<CpuBudgetSpec>,
}

impl Default for TenantCpuSpec {
    fn default() -> Self {
        Self {
            weight: 1,
            max_concurrent_commands: None,
            budget: None,
        }
    }
}

/// A CPU budget: `per_sec_ms` CPU-milliseconds gained a second, at most
/// `burst_ms` held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuBudgetSpec {
    /// CPU-ms a second (`max_cpu_per_sec`).
    pub per_sec_ms: f64,
    /// CPU-ms at once (`cpu_burst`).
    pub burst_ms: f64,
}

/// A tenant entry's CPU keys, as the file gives them.
pub(super) struct CpuKeys {
    pub cpu_weight: Option<u32>,
    pub max_concurrent_commands: Option<usize>,
    pub max_cpu_per_sec: Option<f64>,
    pub cpu_burst: Option<f64>,
}

impl CpuKeys {
    /// The settings, each error naming its key under `key` (`tenants[N]`).
    pub(super) fn resolve(&self, key: &str) -> Result<TenantCpuSpec, ConfigError> {
        let t = self;
        let weight = t.cpu_weight.unwrap_or(1);
        if !(1..=MAX_CPU_WEIGHT).contains(&weight) {
            return Err(invalid(
                format!("{key}.cpu_weight"),
                format!("must be 1..={MAX_CPU_WEIGHT}, not {weight}"),
            ));
        }
        if t.max_concurrent_commands == Some(0) {
            return Err(invalid(
                format!("{key}.max_concurrent_commands"),
                "must be at least 1",
            ));
        }
        let ms = |v: f64, name: &str| {
            if v.is_finite() && v > 0.0 && v <= MAX_CPU_MS {
                Ok(v)
            } else {
                Err(invalid(
                    format!("{key}.{name}"),
                    format!(
                        "must be CPU-milliseconds greater than 0 and at most {MAX_CPU_MS}, not {v}"
                    ),
                ))
            }
        };
        let budget = match (t.max_cpu_per_sec, t.cpu_burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{key}.cpu_burst"),
                    "needs max_cpu_per_sec: a burst is of a rate",
                ));
            }
            (Some(rate), burst) => {
                let per_sec_ms = ms(rate, "max_cpu_per_sec")?;
                let burst_ms = match burst {
                    Some(b) => ms(b, "cpu_burst")?,
                    None => per_sec_ms,
                };
                Some(CpuBudgetSpec {
                    per_sec_ms,
                    burst_ms,
                })
            }
        };
        Ok(TenantCpuSpec {
            weight,
            max_concurrent_commands: t.max_concurrent_commands,
            budget,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn cpu_settings_are_resolved_with_their_defaults() {
        let c = parse(
            "[[tenants]]\nname = \"a\"\ncpu_weight = 3\nmax_concurrent_commands = 2\nmax_cpu_per_sec = 250\n[[tenants]]\nname = \"b\"\nmax_cpu_per_sec = 100\ncpu_burst = 1500.5\n[[tenants]]\nname = \"c\"\n",
        )
        .unwrap();
        let a = c.tenants[0].cpu;
        assert_eq!((a.weight, a.max_concurrent_commands), (3, Some(2)));
        assert_eq!(
            a.budget,
            Some(CpuBudgetSpec {
                per_sec_ms: 250.0,
                burst_ms: 250.0
            })
        );
        assert_eq!(c.tenants[1].cpu.budget.unwrap().burst_ms, 1500.5);
        assert_eq!(c.tenants[2].cpu, TenantCpuSpec::default());
        assert_eq!(c.tenants[2].cpu.weight, 1);
    }

    #[test]
    fn bad_cpu_settings_are_named() {
        let e = err("[[tenants]]\nname = \"a\"\ncpu_weight = 0\n");
        assert!(e.starts_with("tenants[0].cpu_weight"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\ncpu_weight = 1001\n");
        assert!(e.starts_with("tenants[0].cpu_weight"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_concurrent_commands = 0\n");
        assert!(e.starts_with("tenants[0].max_concurrent_commands"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_cpu_per_sec = 0\n");
        assert!(e.starts_with("tenants[0].max_cpu_per_sec"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\nmax_cpu_per_sec = 10\ncpu_burst = -1\n");
        assert!(e.starts_with("tenants[0].cpu_burst"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\ncpu_burst = 10\n");
        assert!(e.starts_with("tenants[0].cpu_burst"), "{e}");
        assert!(e.contains("max_cpu_per_sec"), "{e}");
        let e = err("[[tenants]]\nname = \"a\"\ncpu_weight = \"high\"\n");
        assert!(e.contains("cpu_weight"), "{e}");
    }
}
