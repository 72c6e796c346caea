//! `weft genkey` and `weft pubkey`: drop-in replacements for `wg genkey` and `wg pubkey`,
//! with the same input rules, output and error messages.

use std::io::{self, Read, Write};

use anyhow::bail;
use weft_crypto::{WgPrivateKey, WgPublicKey};
use zeroize::Zeroizing;

use crate::output::{print_secret_line, warn_if_stdout_is_world_accessible};

/// Characters in a base64 WireGuard key.
const KEY_BASE64_LEN: usize = 44;
const BAD_KEY: &str = "Key is not the correct length or format";
const TRAILING: &str = "Trailing characters found after key";

pub fn genkey() -> anyhow::Result<()> {
    warn_if_stdout_is_world_accessible();
    print_secret_line(&WgPrivateKey::generate().to_base64_secret())
}

pub fn pubkey(input: impl Read) -> anyhow::Result<()> {
    let public = public_key_of(input)?;
    let mut out = io::stdout().lock();
    writeln!(out, "{public}")?;
    out.flush()?;
    Ok(())
}

/// Parse a private key as `wg pubkey` does: exactly 44 base64 characters first (no leading
/// whitespace), then only whitespace or NUL bytes until the end of input.
fn public_key_of(mut input: impl Read) -> anyhow::Result<WgPublicKey> {
    let mut text = Zeroizing::new([0u8; KEY_BASE64_LEN]);
    let mut filled = 0;
    while filled < KEY_BASE64_LEN {
        match input.read(&mut text[filled..]) {
            Ok(0) => bail!(BAD_KEY),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("reading the key from stdin")),
        }
    }
    let mut rest = [0u8; 512];
    loop {
        match input.read(&mut rest) {
            Ok(0) => break,
            Ok(n) => {
                if !rest[..n]
                    .iter()
                    .all(|&b| b == 0 || b == b' ' || (9..=13).contains(&b))
                {
                    bail!(TRAILING);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("reading the key from stdin")),
        }
    }
    // wg insists on the padded form; weft-crypto's decoder would also accept surrounding space.
    if text[KEY_BASE64_LEN - 1] != b'=' || text.iter().any(|b| b.is_ascii_whitespace() || *b == 0) {
        bail!(BAD_KEY);
    }
    let text = std::str::from_utf8(&text[..]).map_err(|_| anyhow::anyhow!(BAD_KEY))?;
    let private = WgPrivateKey::from_base64(text).map_err(|_| anyhow::anyhow!(BAD_KEY))?;
    Ok(private.public_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 6.1, Alice's key pair, in WireGuard's base64.
    const PRIVATE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn run(input: &[u8]) -> Result<String, String> {
        public_key_of(input)
            .map(|k| k.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_the_key_with_trailing_whitespace_or_nul() {
        for suffix in ["", "\n", "\r\n", " \t\n\n", "\0", "\x0b\x0c"] {
            assert_eq!(
                run(format!("{PRIVATE}{suffix}").as_bytes()),
                Ok(PUBLIC.into()),
                "{suffix:?}"
            );
        }
    }

    #[test]
    fn refuses_what_wg_refuses() {
        let bad = [
            String::new(),
            PRIVATE[..43].to_string(),
            format!(" {}", &PRIVATE[..43]),
            format!("{}!=", &PRIVATE[..42]),
            format!("{}==", &PRIVATE[..42]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB".into(),
            // Non-canonical: the last character carries bits beyond the 32nd byte.
            format!("{}p=", &PRIVATE[..42]),
        ];
        for input in &bad {
            assert_eq!(run(input.as_bytes()), Err(BAD_KEY.into()), "{input:?}");
        }
        for input in [
            format!("{PRIVATE}x"),
            format!("{PRIVATE}\n{PRIVATE}"),
            format!(" {PRIVATE}\n"),
        ] {
            assert_eq!(run(input.as_bytes()), Err(TRAILING.into()), "{input:?}");
        }
    }
}
