//! The one error type of the core. The binding layer maps each variant to its own
//! Python exception class (all under `ferrolm.FerrolmError`).

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A config.json that is malformed, inconsistent, or names an unsupported architecture/feature.
    Config(String),
    /// A checkpoint tensor is missing.
    MissingTensor(String),
    /// A checkpoint tensor has the wrong shape or dtype, or its bytes are malformed.
    Tensor(String),
    /// A file could not be read or parsed.
    Io(String),
    /// A token id outside the vocabulary.
    InvalidToken { token: i64, vocab_size: usize },
    /// The sequence would grow past the context length.
    ContextOverflow { needed: usize, context_length: usize },
    /// An argument outside its valid range (sampling knobs, thread counts, empty inputs).
    InvalidArgument(String),
    /// A buffer (KV cache, weights, logits) too large for this machine's memory.
    Memory(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(m) => write!(f, "invalid model config: {m}"),
            Error::MissingTensor(name) => write!(f, "checkpoint is missing tensor '{name}'"),
            Error::Tensor(m) => write!(f, "bad tensor: {m}"),
            Error::Io(m) => write!(f, "{m}"),
            Error::InvalidToken { token, vocab_size } => {
                write!(f, "token id {token} is outside the vocabulary (size {vocab_size})")
            }
            Error::ContextOverflow { needed, context_length } => write!(
                f,
                "sequence of {needed} tokens exceeds the context length of {context_length}"
            ),
            Error::InvalidArgument(m) => write!(f, "{m}"),
            Error::Memory(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}
