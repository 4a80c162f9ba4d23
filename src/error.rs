//! Errors from everything that depends on the world outside the program:
//! GPU adapters and drivers, files, data handed in at run time.
//!
//! The contract, the same on every device:
//! - **Programmer errors** — shapes that do not fit an op, an axis out of
//!   range, a shape with more elements than memory can hold — panic, with
//!   a message that starts with the op's name (`"add: shapes [2] and [3]
//!   cannot be broadcast together"`), as indexing out of bounds does.
//! - **Errors only the data reveals** — an index or a class label out of
//!   range ([`Error::IndexOutOfRange`]) — and **resources** — a tensor the
//!   device cannot allocate ([`Error::OutOfMemory`], [`Error::TooLarge`]),
//!   a lost device — *poison* the result: ops return at once, every result
//!   computed from a poisoned one is poisoned too, and reading any of them
//!   (`to_vec`, `item`) returns the error. Results that do not depend on
//!   it are unaffected. On the GPU a kernel that meets a bad index records
//!   it in a small error buffer (a device-side assert) that the read back
//!   checks, so a training loop never waits for the check. Of several
//!   errors reaching one result, the earliest (the first cause) wins.
//! - **NaN and ±∞ are values, not errors**: they propagate as IEEE-754 says
//!   (and as PyTorch, where IEEE is silent: NaN wins `max` and `argmax`).
//!   [`crate::detect_anomaly`] finds the op that made one.
//! - Files, adapters and arguments known only at run time return `Err`
//!   from the call that meets them, with a message a user can act on.

use std::path::PathBuf;
use std::sync::Arc;

/// The error type of every fallible wgrad operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Data handed to a constructor does not fit the requested shape.
    #[error("{op}: {msg}")]
    Shape {
        /// The function that rejected the data.
        op: &'static str,
        /// What did not fit.
        msg: String,
    },

    /// An argument only known at run time cannot be used: an empty
    /// training set, a batch size of zero, a split that leaves nothing.
    #[error("{op}: {msg}")]
    InvalidArgument {
        /// The function that rejected it.
        op: &'static str,
        /// What is wrong with it.
        msg: String,
    },

    /// No GPU adapter could be found or opened.
    #[error(
        "no GPU adapter found ({0}). Install a Vulkan, Metal or DX12 driver; on Linux without a GPU, \
         Mesa's software Vulkan works: `apt-get install mesa-vulkan-drivers`"
    )]
    NoAdapter(String),

    /// The GPU device was lost (driver reset, GPU removed, device destroyed).
    #[error("GPU device lost: {0}. Tensors on it are gone; create a new device (or use the CPU)")]
    DeviceLost(String),

    /// The GPU ran out of memory.
    #[error("GPU out of memory: {0}. Use smaller batches or drop tensors you no longer need")]
    OutOfMemory(String),

    /// A tensor is larger than one GPU buffer binding may be on this adapter.
    #[error(
        "{op}: a tensor of {bytes} bytes exceeds this adapter's largest storage binding ({limit} bytes); \
         split the work into smaller tensors or use the CPU"
    )]
    TooLarge {
        /// The op that needed the buffer.
        op: &'static str,
        /// The size asked for.
        bytes: u64,
        /// The adapter's `max_storage_buffer_binding_size`.
        limit: u64,
    },

    /// wgpu reported an error we did not expect (validation, internal).
    #[error("GPU error: {0}")]
    Gpu(String),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },

    /// A file was read but its contents are not what they claim to be.
    #[error("{}: {msg}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// An index (or class label) that the data handed to an op held is not
    /// an integer in `0..bound`. Only the data reveals it, so it is reported
    /// the same way on every device: the op's result, and everything
    /// computed from it, is poisoned, and reading any of it returns this.
    #[error("{op}: index {index} is out of range for an axis of size {bound}")]
    IndexOutOfRange {
        /// The op that met the index.
        op: &'static str,
        /// An offending value (indices are stored as f32): of several, the
        /// first on the CPU, and on a GPU whichever one an invocation
        /// reported last.
        index: f32,
        /// The size of the axis it indexes.
        bound: usize,
    },

    /// An op produced NaN or infinity inside [`crate::detect_anomaly`].
    #[error("anomaly: {0}")]
    Anomaly(String),

    /// Saved parameters do not fit the model they are loaded into.
    #[error("{0}")]
    Mismatch(String),

    /// Data-parallel training could not communicate (the `mpi` feature's
    /// `wgrad::distributed`): MPI missing a capability, or a peer gone.
    #[error("distributed: {0}")]
    Distributed(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source: Arc::new(source) }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }
}

/// `Result` with wgrad's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
