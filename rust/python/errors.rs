//! Maps the core's one Error enum to the exception classes of `ferrolm.errors`.

use pyo3::PyErr;

use crate::error::Error;

pyo3::import_exception!(ferrolm.errors, ConfigError);
pyo3::import_exception!(ferrolm.errors, CheckpointError);
pyo3::import_exception!(ferrolm.errors, MissingTensorError);
pyo3::import_exception!(ferrolm.errors, TensorError);
pyo3::import_exception!(ferrolm.errors, InvalidTokenError);
pyo3::import_exception!(ferrolm.errors, ContextLengthError);
pyo3::import_exception!(ferrolm.errors, InvalidArgumentError);
pyo3::import_exception!(ferrolm.errors, MemoryLimitError);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Config(_) => ConfigError::new_err(msg),
            Error::MissingTensor(_) => MissingTensorError::new_err(msg),
            Error::Tensor(_) => TensorError::new_err(msg),
            Error::Io(_) => CheckpointError::new_err(msg),
            Error::InvalidToken { .. } => InvalidTokenError::new_err(msg),
            Error::ContextOverflow { .. } => ContextLengthError::new_err(msg),
            Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
            Error::Memory(_) => MemoryLimitError::new_err(msg),
        }
    }
}
