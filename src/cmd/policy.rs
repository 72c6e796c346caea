//! `weft policy apply|list|get|delete|why|namespace`: a thin client of the daemon, which
//! parses, checks, signs and spreads policies (see `daemon::policy`).

use std::io::{Read, Write};

use anyhow::{bail, Context};

use super::client::{Daemon, DEFAULT_TIMEOUT};
use crate::cli::PolicyCommand;
use crate::daemon::api::{Request, Response};
use crate::daemon::policy::{PolicyAnswer, PolicyRequest, PolicySummary};
use crate::output::{self, OutputFormat};

pub fn run(cmd: PolicyCommand, format: OutputFormat) -> anyhow::Result<()> {
    let (api, request) = match cmd {
        PolicyCommand::Apply {
            file,
            namespace,
            api,
        } => {
            let yaml = read_input(&file)?;
            (api, PolicyRequest::Apply { yaml, namespace })
        }
        PolicyCommand::List(api) => (api, PolicyRequest::List),
        PolicyCommand::Get { name, api } => (api, PolicyRequest::Get { name }),
        PolicyCommand::Delete { name, api } => (api, PolicyRequest::Delete { name }),
        PolicyCommand::Why {
            from,
            to,
            port,
            api,
        } => (api, PolicyRequest::Why { from, to, port }),
        PolicyCommand::Namespace {
            name,
            labels,
            clear,
            api,
        } => {
            let labels = (clear || !labels.is_empty()).then(|| labels.into_iter().collect());
            (api, PolicyRequest::Namespace { name, labels })
        }
    };
    let daemon = Daemon::new(&api, DEFAULT_TIMEOUT);
    let answer = match daemon.ask(Request::Policy(request))? {
        Response::Policy { policy, .. } => policy,
        _ => bail!("the daemon answered a policy request with something else"),
    };
    if format == OutputFormat::Json {
        return output::print_json(&answer);
    }
    let mut out = std::io::stdout().lock();
    write_text(&mut out, &answer)?;
    out.flush()?;
    Ok(())
}

/// The policy file (at most the parser's bound), or stdin for `-`.
fn read_input(file: &std::path::Path) -> anyhow::Result<String> {
    let limit = weft_mesh::policy::spec::MAX_INPUT as u64 + 1;
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .take(limit)
            .read_to_string(&mut text)
            .context("reading the policy from stdin")?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(limit).read_to_string(&mut text))
            .with_context(|| format!("reading {}", file.display()))?;
    }
    if text.len() as u64 >= limit {
        bail!(
            "{} is larger than {} bytes",
            file.display(),
            weft_mesh::policy::spec::MAX_INPUT
        );
    }
    Ok(text)
}

fn row(p: &PolicySummary) -> Vec<String> {
    vec![
        p.namespace.clone(),
        p.name.clone(),
        p.policy_types.join(","),
        p.ingress_rules.to_string(),
        p.egress_rules.to_string(),
        p.drops.to_string(),
        p.applied_by.clone(),
    ]
}

fn write_text(out: &mut impl Write, answer: &PolicyAnswer) -> anyhow::Result<()> {
    match answer {
        PolicyAnswer::Changed { changes } => {
            for c in changes {
                writeln!(out, "{} {}", c.name, c.action)?;
            }
        }
        PolicyAnswer::List {
            policies,
            spoofed,
            rules,
            error,
        } => {
            let rows: Vec<Vec<String>> = policies.iter().map(row).collect();
            output::write_table(
                out,
                &[
                    "NAMESPACE",
                    "NAME",
                    "TYPES",
                    "INGRESS",
                    "EGRESS",
                    "DROPS",
                    "APPLIED-BY",
                ],
                &rows,
            )?;
            writeln!(
                out,
                "{} policies; {rules} rules in force on this node; {spoofed} forged packets dropped",
                policies.len()
            )?;
            if let Some(e) = error {
                writeln!(out, "error: {e}")?;
            }
        }
        PolicyAnswer::Get { summary, object } => {
            output::write_table(
                out,
                &[
                    "NAMESPACE",
                    "NAME",
                    "TYPES",
                    "INGRESS",
                    "EGRESS",
                    "DROPS",
                    "APPLIED-BY",
                ],
                &[row(summary)],
            )?;
            writeln!(out, "{}", serde_json::to_string_pretty(object)?)?;
        }
        PolicyAnswer::Why { why } => writeln!(out, "{why}")?,
        PolicyAnswer::Namespaces { namespaces } => {
            let rows: Vec<Vec<String>> = namespaces
                .iter()
                .map(|(name, labels)| {
                    let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    vec![
                        name.clone(),
                        if l.is_empty() {
                            "-".into()
                        } else {
                            l.join(",")
                        },
                    ]
                })
                .collect();
            output::write_table(out, &["NAMESPACE", "LABELS"], &rows)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::policy::Change;

    #[test]
    fn text_output_shows_changes_lists_and_namespaces() {
        let summary = PolicySummary {
            namespace: "shop".into(),
            name: "web".into(),
            policy_types: vec!["Ingress".into()],
            ingress_rules: 1,
            egress_rules: 0,
            applied_by: "n0".into(),
            applied_at_ms: 1,
            drops: 42,
        };
        let mut out = Vec::new();
        for answer in [
            PolicyAnswer::Changed {
                changes: vec![Change {
                    name: "shop/web".into(),
                    action: "created".into(),
                }],
            },
            PolicyAnswer::List {
                policies: vec![summary],
                spoofed: 0,
                rules: 17,
                error: Some("nft refused".into()),
            },
            PolicyAnswer::Namespaces {
                namespaces: [(
                    "shop".to_string(),
                    [("team".to_string(), "a".to_string())].into(),
                )]
                .into(),
            },
        ] {
            write_text(&mut out, &answer).expect("write");
        }
        let text = String::from_utf8(out).expect("utf-8");
        for want in [
            "shop/web created",
            "NAMESPACE",
            "42",
            "17 rules in force",
            "error: nft refused",
            "team=a",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }
}
