/// Errors from safety classifiers.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// A classifier failed to judge a response (a model error, a malformed judge output, ...).
    #[error("classifier `{classifier}` failed: {message}")]
    Classifier {
        /// Name of the classifier.
        classifier: String,
        /// What went wrong.
        message: String,
    },
    /// A classifier returned a probability outside [0, 1] or NaN.
    #[error("classifier `{classifier}` returned p_unsafe = {value}, outside [0, 1]")]
    InvalidProbability {
        /// Name of the classifier.
        classifier: String,
        /// The offending value.
        value: f64,
    },
    /// A classifier was configured inconsistently (e.g. an empty lexicon).
    #[error("invalid classifier configuration: {0}")]
    Config(String),
    /// A remote judge endpoint gave no usable answer (after every retry, where retrying made sense).
    #[error("judge `{judge}`: endpoint {url}: {message}")]
    Endpoint {
        /// Name of the judge.
        judge: String,
        /// The URL requested (never the API key).
        url: String,
        /// What went wrong, with the attempts made.
        message: String,
    },
    /// The on-disk verdict cache could not be read or written.
    #[error("judge verdict cache {path}: {message}")]
    Cache {
        /// The cache file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}
