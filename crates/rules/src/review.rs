//! What `pgevents check` says about the rules: rules that do not run for want of an owner,
//! owners the workers cannot log in as, owners with every right (superusers), and secrets
//! granted to every rule owner. (Whether each rule's text parses is `pgevents rules check`'s
//! question: it needs the owners' sessions.)

use pgevents_pg::PgError;
use tokio_postgres::Client;

use crate::{installed_version, RulesError};

/// Something about the rules that weakens the deployment or keeps rules from running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concern {
    pub what: &'static str,
    pub detail: String,
}

const OWNERLESS: &str = "
    SELECT 'work item ' || quote_literal(name) FROM pgevents.work_item WHERE owner IS NULL
    UNION ALL
    SELECT 'action ' || quote_literal(name) FROM pgevents.action WHERE owner IS NULL
    ORDER BY 1";

const OWNERS: &str = "
    SELECT o.owner::text, r.rolname IS NULL, coalesce(r.rolcanlogin, false), coalesce(r.rolsuper, false)
    FROM (SELECT owner FROM pgevents.work_item UNION SELECT owner FROM pgevents.action) o
    LEFT JOIN pg_roles r ON r.rolname = o.owner
    WHERE o.owner IS NOT NULL
    ORDER BY 1";

const PUBLIC_SECRETS: &str = "SELECT secret FROM pgevents.secret_grant WHERE grantee = 'PUBLIC' ORDER BY 1";

fn read(e: tokio_postgres::Error) -> RulesError {
    PgError::new("cannot review the rules", e).into()
}

/// The concerns about the rules in this database (none when they are not installed).
pub async fn review(client: &Client) -> Result<Vec<Concern>, RulesError> {
    if installed_version(client).await? < 4 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let ownerless: Vec<String> = client.query(OWNERLESS, &[]).await.map_err(read)?.iter().map(|r| r.get(0)).collect();
    if !ownerless.is_empty() {
        out.push(Concern {
            what: "rules without an owner",
            detail: format!(
                "{} do not run: they were written before rules ran with their author's rights; the schema's owner reads each and gives it to the role whose rights it should run with: UPDATE pgevents.work_item SET owner = '<role>' WHERE name = '...' (pgevents.action likewise)",
                ownerless.join(", ")
            ),
        });
    }
    for row in client.query(OWNERS, &[]).await.map_err(read)? {
        let (owner, missing, can_login, superuser): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if missing {
            out.push(Concern {
                what: "rule owners",
                detail: format!("role {owner:?} owns rules but does not exist any more: its rules do not run"),
            });
        } else if !can_login {
            out.push(Concern {
                what: "rule owners",
                detail: format!("role {owner:?} owns rules but cannot log in (NOLOGIN): workers run a rule in a session of its owner, so its rules do not run; write rules as a login role"),
            });
        }
        if superuser {
            out.push(Concern {
                what: "rule owners",
                detail: format!("role {owner:?} is a superuser: its rules run with every right; write rules as a role with only the rights they need"),
            });
        }
    }
    let public: Vec<String> = client.query(PUBLIC_SECRETS, &[]).await.map_err(read)?.iter().map(|r| r.get(0)).collect();
    if !public.is_empty() {
        out.push(Concern {
            what: "secrets",
            detail: format!(
                "{} granted to PUBLIC: every rule author can send it wherever --http-allow lets an action go; grant it to the roles that need it",
                public.join(", ")
            ),
        });
    }
    Ok(out)
}
