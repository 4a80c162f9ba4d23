//! Devices: where a tensor's storage lives and whose kernels compute on it.
//!
//! `Device` is a runtime value rather than a type parameter, so the same model
//! code runs on either device and a program can choose at start-up.

use crate::backend::Backend;
use crate::backend::cpu::Cpu;
use std::fmt;

/// A compute device.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU reference backend.
    #[default]
    Cpu,
}

impl Device {
    /// The kernels of this device.
    pub(crate) fn backend(&self) -> &dyn Backend {
        match self {
            Device::Cpu => &Cpu,
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
