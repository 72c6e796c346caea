//! How state-printing commands print: aligned text for people, JSON for programs (`-o json`).

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;

use serde::Serialize;
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned `field: value` lines.
    Text,
    /// One JSON object.
    Json,
}

/// What a state-printing command shows. The JSON form is the `Serialize` impl.
pub trait Report: Serialize {
    /// The text form: `(label, value)` pairs, printed aligned one per line.
    fn fields(&self) -> Vec<(&'static str, String)>;
}

/// Print `report` to stdout in `format`.
pub fn print(format: OutputFormat, report: &impl Report) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    write(&mut out, format, report)?;
    out.flush()?;
    Ok(())
}

fn write(out: &mut impl Write, format: OutputFormat, report: &impl Report) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => {
            let fields = report.fields();
            let width = fields
                .iter()
                .map(|(label, _)| label.len())
                .max()
                .unwrap_or(0);
            for (label, value) in fields {
                writeln!(
                    out,
                    "{:width$} {value}",
                    format!("{label}:"),
                    width = width + 1
                )?;
            }
        }
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, report)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Print a secret and a newline to stdout; the formatted copy is zeroized.
pub fn print_secret_line(secret: &str) -> anyhow::Result<()> {
    let mut line = Zeroizing::new(String::with_capacity(secret.len() + 1));
    line.push_str(secret);
    line.push('\n');
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The same warning `wg genkey` gives when stdout is a file others can read.
pub fn warn_if_stdout_is_world_accessible() {
    let Ok(fd) = io::stdout().as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return;
    };
    if meta.is_file() && meta.permissions().mode() & 0o007 != 0 {
        eprintln!("Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying again.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        name: &'static str,
        longer_name: u32,
    }

    impl Report for Sample {
        fn fields(&self) -> Vec<(&'static str, String)> {
            vec![
                ("name", self.name.to_string()),
                ("longer name", self.longer_name.to_string()),
            ]
        }
    }

    fn render(format: OutputFormat) -> String {
        let mut out = Vec::new();
        write(
            &mut out,
            format,
            &Sample {
                name: "a",
                longer_name: 7,
            },
        )
        .expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn text_is_aligned_and_json_parses() {
        assert_eq!(
            render(OutputFormat::Text),
            "name:        a\nlonger name: 7\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(OutputFormat::Json)).expect("json");
        assert_eq!(json, serde_json::json!({"name": "a", "longer_name": 7}));
    }
}
