/// Exit codes, documented in `rdm --help`.
pub mod exit {
    /// The operation failed: bad table, unusable backing file, device error.
    pub const FAILED: i32 = 1;
    /// Wrong usage, or something this build or kernel cannot do.
    pub const USAGE: i32 = 2;
}

/// One clear sentence for stderr, optionally followed by the input it is
/// about (the offending table line), and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
    pub context: Option<String>,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: exit::FAILED,
            message: message.into(),
            context: None,
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: exit::USAGE,
            message: message.into(),
            context: None,
        }
    }

    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }

    pub fn report(&self) {
        eprintln!("rdm: {}", self.message);
        if let Some(c) = &self.context {
            eprintln!("  | {c}");
        }
    }
}
