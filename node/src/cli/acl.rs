//! `cairn acl`: bootstrap, tokens and policies, and `cairn audit`.

use std::path::{Path, PathBuf};

use cairn_client::{AclRules, Client, PolicyRequest, TokenInfo, TokenRequest};
use clap::Subcommand;

use super::{print_json, report_write, table, usage, Failed, Target};

#[derive(Debug, Subcommand)]
pub enum AclAction {
    /// Make the first management token (once per cluster) and print its secret.
    Bootstrap,
    /// Show the token this command sends (--token), as the cluster sees it.
    Whoami,
    /// Create, list or delete tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Create, list or delete policies.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token linked to policies; its secret is printed once.
    Create {
        /// A policy to link (repeat for more).
        #[arg(long = "policy", value_name = "NAME")]
        policies: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// Refuse (then delete) the token this long after it is made: `1h`, `30d`.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Change a token's policies (the anonymous token's too: accessor `anonymous`).
    Update {
        accessor: String,
        #[arg(long = "policy", value_name = "NAME")]
        policies: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (accessor ids, never secrets).
    List,
    /// Delete a token by accessor id: it is refused on every node once they apply it.
    Delete { accessor: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyAction {
    /// Create or replace a policy. Rules are JSON,
    /// '{"service_prefix": {"web": "write"}, "operator": "read"}', or Consul's HCL form,
    /// 'service_prefix "web" { policy = "write" }  operator = "read"'.
    Create {
        name: String,
        /// The rules, JSON or HCL.
        #[arg(
            long,
            required_unless_present = "rules_file",
            conflicts_with = "rules_file"
        )]
        rules: Option<String>,
        /// A file holding the rules, JSON or HCL (a Consul policy file).
        #[arg(long, value_name = "PATH")]
        rules_file: Option<PathBuf>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List policies with their rules.
    List,
    /// Delete a policy no token links.
    Delete { name: String },
}

fn print_token(target: &Target, t: &TokenInfo) {
    if target.json {
        print_json(t);
        return;
    }
    println!("AccessorID:  {}", t.accessor);
    if let Some(secret) = &t.secret {
        println!("SecretID:    {secret}");
    }
    println!("Description: {}", t.description);
    println!("Policies:    {}", t.policies.join(", "));
    if let Some(ms) = t.expires_at_ms {
        println!("Expires:     {ms} (Unix ms, leader time)");
    }
}

pub(super) async fn run(client: &Client, target: &Target, action: AclAction) -> Result<(), Failed> {
    match action {
        AclAction::Bootstrap => {
            let t = client.acl_bootstrap().await?;
            print_token(target, &t);
            if !target.json {
                eprintln!("Keep the SecretID safe: it is shown once, and grants every right.");
            }
        }
        AclAction::Whoami => {
            let me = client.acl_whoami().await?;
            match (&me.token, target.json) {
                (_, true) => print_json(&me),
                (None, false) => println!("ACLs are not enforced on this node"),
                (Some(t), false) => print_token(target, t),
            }
        }
        AclAction::Token { action } => match action {
            TokenAction::Create {
                policies,
                description,
                expires_in,
            } => {
                let t = client
                    .acl_token_create(&TokenRequest {
                        description,
                        policies,
                        expiration_ttl: expires_in,
                    })
                    .await?;
                print_token(target, &t);
            }
            TokenAction::Update {
                accessor,
                policies,
                description,
            } => {
                let req = TokenRequest {
                    description,
                    policies,
                    expiration_ttl: None,
                };
                let w = client.acl_token_update(&accessor, &req).await?;
                report_write(target, &w, &format!("updated token {accessor}"));
            }
            TokenAction::List => {
                let list = client.acl_tokens().await?;
                if target.json {
                    print_json(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.accessor.clone(),
                            t.policies.join(","),
                            t.description.clone(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["ACCESSOR", "POLICIES", "DESCRIPTION"], &rows));
            }
            TokenAction::Delete { accessor } => {
                let w = client.acl_token_delete(&accessor).await?;
                report_write(target, &w, &format!("deleted token {accessor}"));
            }
        },
        AclAction::Policy { action } => match action {
            PolicyAction::Create {
                name,
                rules,
                rules_file,
                description,
            } => {
                let rules = match (rules, rules_file) {
                    (Some(text), _) => {
                        parse_rules(&text).map_err(|e| usage(format!("--rules: {e}")))?
                    }
                    (None, Some(path)) => read_rules(&path)?,
                    (None, None) => return Err(usage("give --rules or --rules-file")),
                };
                let req = PolicyRequest {
                    name: None,
                    description,
                    rules,
                };
                let w = client.acl_policy_set(&name, &req).await?;
                report_write(target, &w, &format!("set policy {name}"));
            }
            PolicyAction::List => {
                let list = client.acl_policies().await?;
                if target.json {
                    print_json(&list);
                    return Ok(());
                }
                let rows: Vec<Vec<String>> = list
                    .policies
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            serde_json::to_string(&p.rules).unwrap_or_default(),
                            p.description.clone(),
                        ]
                    })
                    .collect();
                println!("{}", table(&["POLICY", "RULES", "DESCRIPTION"], &rows));
            }
            PolicyAction::Delete { name } => {
                let w = client.acl_policy_delete(&name).await?;
                report_write(target, &w, &format!("deleted policy {name}"));
            }
        },
    }
    Ok(())
}

/// `cairn audit`: the most recent changes made through the API.
pub(super) async fn audit(
    client: &Client,
    target: &Target,
    limit: Option<usize>,
) -> Result<(), Failed> {
    let list = client.audit(limit).await?;
    if target.json {
        print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .entries
        .iter()
        .map(|e| {
            vec![
                e.index.to_string(),
                e.time_ms.to_string(),
                e.accessor.clone().unwrap_or_else(|| "-".into()),
                e.op.clone(),
                e.service.clone().unwrap_or_default(),
                e.id.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["INDEX", "TIME_MS", "ACCESSOR", "OP", "SERVICE", "ID"],
            &rows
        )
    );
    Ok(())
}

/// Largest rules file read: a policy is a handful of lines, the server takes 64 KiB of JSON.
const MAX_RULES_FILE: u64 = 64 << 10;

fn read_rules(path: &Path) -> Result<AclRules, Failed> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("--rules-file {shown}: {e}")))?;
    if meta.len() > MAX_RULES_FILE {
        return Err(usage(format!(
            "--rules-file {shown}: {} bytes, more than the {MAX_RULES_FILE} a policy may have",
            meta.len()
        )));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| usage(format!("--rules-file {shown}: {e}")))?;
    parse_rules(&text).map_err(|e| usage(format!("--rules-file {shown}: {e}")))
}

/// Policy rules from JSON (Cairn's API form) or from Consul's HCL form:
///
/// ```hcl
/// service "web" { policy = "write" }
/// service_prefix "" { policy = "read" }
/// operator = "read"
/// acl = "write"
/// ```
///
/// Text whose first non-blank character is `{` is JSON; anything else is HCL. Only Cairn's
/// resources are accepted: a Consul rule for something Cairn does not have (`key_prefix`,
/// `node`, `agent`, ...) is an error naming it, not a rule silently dropped. The access words
/// themselves (`read`, `write`, `deny`) are checked by the server, as for JSON.
pub(crate) fn parse_rules(text: &str) -> Result<AclRules, String> {
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| format!("not policy rules (JSON): {e}"));
    }
    let body = hcl::parse(text).map_err(|e| format!("not policy rules (HCL): {e}"))?;
    let mut rules = AclRules::default();
    for structure in body.into_iter() {
        match structure {
            hcl::Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                let slot = match key {
                    "operator" => &mut rules.operator,
                    "acl" => &mut rules.acl,
                    _ => return Err(unknown_rule(key)),
                };
                if slot.is_some() {
                    return Err(format!("`{key}` is given twice"));
                }
                *slot = Some(string_value(&attr.expr, key)?);
            }
            hcl::Structure::Block(block) => {
                let kind = block.identifier.as_str();
                let map = match kind {
                    "service" => &mut rules.service,
                    "service_prefix" => &mut rules.service_prefix,
                    _ => return Err(unknown_rule(kind)),
                };
                let [label] = block.labels.as_slice() else {
                    return Err(format!(
                        "`{kind}` needs one name: {kind} \"web\" {{ policy = \"read\" }}"
                    ));
                };
                let name = label.as_str().to_owned();
                let mut policy = None;
                for inner in block.body.into_iter() {
                    match inner {
                        hcl::Structure::Attribute(a) if a.key.as_str() == "policy" => {
                            if policy.is_some() {
                                return Err(format!("{kind} \"{name}\": `policy` is given twice"));
                            }
                            policy = Some(string_value(&a.expr, "policy")?);
                        }
                        hcl::Structure::Attribute(a) => {
                            return Err(format!(
                                "{kind} \"{name}\": `{}` is not supported (only `policy`)",
                                a.key.as_str()
                            ))
                        }
                        hcl::Structure::Block(b) => {
                            return Err(format!(
                                "{kind} \"{name}\": block `{}` is not supported (only `policy`)",
                                b.identifier.as_str()
                            ))
                        }
                    }
                }
                let Some(policy) = policy else {
                    return Err(format!("{kind} \"{name}\" has no `policy`"));
                };
                if map.insert(name.clone(), policy).is_some() {
                    return Err(format!("{kind} \"{name}\" is given twice"));
                }
            }
        }
    }
    Ok(rules)
}

fn string_value(expr: &hcl::Expression, key: &str) -> Result<String, String> {
    match expr {
        hcl::Expression::String(s) => Ok(s.clone()),
        other => Err(format!(
            "`{key}` must be a quoted string such as \"read\", not {other}"
        )),
    }
}

fn unknown_rule(kind: &str) -> String {
    format!(
        "`{kind}` is not a Cairn rule: policies have `service`, `service_prefix`, `operator` and \
         `acl` (Consul's other resources, such as key_prefix or node, have nothing to guard here)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hcl_and_json_give_the_same_rules() {
        let hcl = r#"
            # A Consul policy file.
            service "web" { policy = "write" }
            service_prefix "" {
              policy = "read"
            }
            operator = "read"
            acl = "deny"
        "#;
        let json = r#"{"service": {"web": "write"}, "service_prefix": {"": "read"},
                       "operator": "read", "acl": "deny"}"#;
        let from_hcl = parse_rules(hcl).unwrap();
        assert_eq!(from_hcl, parse_rules(json).unwrap());
        assert_eq!(
            from_hcl.service.get("web").map(String::as_str),
            Some("write")
        );
        assert_eq!(
            from_hcl.service_prefix.get("").map(String::as_str),
            Some("read")
        );
    }

    #[test]
    fn consul_rules_cairn_lacks_are_errors_not_dropped() {
        for text in [
            r#"key_prefix "" { policy = "write" }"#,
            r#"node_prefix "" { policy = "read" }"#,
            r#"keyring = "write""#,
        ] {
            let e = parse_rules(text).unwrap_err();
            assert!(e.contains("is not a Cairn rule"), "{text}: {e}");
        }
    }

    #[test]
    fn malformed_hcl_is_an_error_naming_what_is_wrong() {
        let cases = [
            (r#"service "web" { policy = "write" "#, "HCL"),
            (r#"service { policy = "write" }"#, "needs one name"),
            (r#"service "a" "b" { policy = "write" }"#, "needs one name"),
            (r#"service "web" { }"#, "has no `policy`"),
            (
                "service \"web\" {\n policy = \"read\"\n intentions = \"read\"\n}",
                "`intentions`",
            ),
            (r#"service "web" { policy = read }"#, "quoted string"),
            (r#"operator = 1"#, "quoted string"),
            (
                r#"service "web" { policy = "read" }
                   service "web" { policy = "write" }"#,
                "given twice",
            ),
            (
                r#"operator = "read"
                operator = "write""#,
                "redefined attribute",
            ),
        ];
        for (text, want) in cases {
            let e = parse_rules(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
