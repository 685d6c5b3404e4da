//! `cairn acl`: bootstrap, tokens and policies, and `cairn audit`.

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
    /// Create or replace a policy. Rules are JSON:
    /// '{"service_prefix": {"web": "write"}, "operator": "read"}'.
    Create {
        name: String,
        #[arg(long)]
        rules: String,
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
                description,
            } => {
                let rules: AclRules = serde_json::from_str(&rules)
                    .map_err(|e| usage(format!("--rules: not policy rules: {e}")))?;
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
