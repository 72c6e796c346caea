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

pub(crate) fn write(
    out: &mut impl Write,
    format: OutputFormat,
    report: &impl Report,
) -> anyhow::Result<()> {
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

/// Write `rows` under `header` as columns separated by two spaces, each as wide as its widest
/// cell; the last column is not padded, and trailing spaces are trimmed.
pub fn write_table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let len = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(len),
                None => widths.push(len),
            }
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', pad + 2));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

/// Print the outcome of a command that changes something (`forget`, `connect`, `reset`):
/// the message, or `{"ok":true,"message":"..."}` with `-o json`.
pub fn print_outcome(format: OutputFormat, ok: bool, message: &str) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json => print_json(&serde_json::json!({ "ok": ok, "message": message })),
        OutputFormat::Text => {
            let mut out = io::stdout().lock();
            writeln!(out, "{message}")?;
            out.flush()?;
            Ok(())
        }
    }
}

/// Print any serializable value as pretty JSON to stdout.
pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Bytes in a short human form: `512 B`, `1.5 KiB`, `3.2 MiB`, ...
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An age in seconds in a short human form: `4s ago`, `2m10s ago`, `3h ago`.
pub fn ago(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    if s < 60 {
        format!("{s}s ago")
    } else if s < 3600 {
        format!("{}m{:02}s ago", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h{:02}m ago", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d ago", s / 86400)
    }
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
    fn tables_align_columns_and_trim() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xyz".into(), "1".into(), "".into()],
                vec!["é".into(), "22".into(), "last".into()],
            ],
        )
        .expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "A    LONG HEADER  C\nxyz  1\né    22           last\n"
        );
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(ago(4.7), "4s ago");
        assert_eq!(ago(130.0), "2m10s ago");
        assert_eq!(ago(7260.0), "2h01m ago");
        assert_eq!(ago(-1.0), "0s ago");
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
