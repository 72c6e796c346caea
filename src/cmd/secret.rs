//! `weft secret new` and `weft secret check`.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use weft_crypto::ClusterSecret;

use crate::output::{
    self, print_secret_line, warn_if_stdout_is_world_accessible, OutputFormat, Report,
};

pub fn new(out: Option<&Path>) -> anyhow::Result<()> {
    let secret = ClusterSecret::generate();
    match out {
        Some(path) => {
            secret
                .write_new(path)
                .context("writing the cluster secret")?;
            eprintln!(
                "wrote a new 256-bit cluster secret to {} (mode 0600)",
                path.display()
            );
            Ok(())
        }
        None => {
            warn_if_stdout_is_world_accessible();
            print_secret_line(&secret.to_text())
        }
    }
}

#[derive(Serialize)]
struct SecretCheck<'a> {
    secret_file: &'a Path,
    acceptable: bool,
}

impl Report for SecretCheck<'_> {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("secret file", self.secret_file.display().to_string()),
            (
                "acceptable",
                if self.acceptable {
                    "yes".into()
                } else {
                    "no".into()
                },
            ),
        ]
    }
}

/// An unacceptable secret is an error (exit status 1) that says why.
pub fn check(secret_file: Option<&Path>, format: OutputFormat) -> anyhow::Result<()> {
    let Some(path) = secret_file else {
        return Err(super::usage_error(
            &["secret", "check"],
            "no secret file: give --secret-file FILE or set WEFT_SECRET_FILE",
        ));
    };
    // The error names the file and says what is wrong (too open, too weak), never the secret.
    ClusterSecret::load(path)?;
    output::print(
        format,
        &SecretCheck {
            secret_file: path,
            acceptable: true,
        },
    )
}
