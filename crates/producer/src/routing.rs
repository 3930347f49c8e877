//! Where each table's events go and what they carry: whether the table is streamed at all
//! (PGTABLES, include/exclude globs, never the internal `pgevents` schema), its routing key
//! (from `--routing-key-template`), its exchange (`--exchange-map`) and the columns left out
//! (`--exclude-columns`). Decided once per table and cached.

use std::collections::HashMap;
use std::sync::Arc;

use pgevents_decode::TableRef;
use pgevents_event::Glob;

/// The schema of pgevents' own tables (rules, snapshot progress); never streamed.
pub const INTERNAL_SCHEMA: &str = "pgevents";

/// Routing settings, validated when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    template: Vec<TemplatePart>,
    /// `(table glob, exchange)`, first match wins.
    pub exchange_map: Vec<(String, String)>,
    pub include_tables: Vec<String>,
    pub exclude_tables: Vec<String>,
    /// `column` (any table) or `schema.table.column`, each part a glob.
    pub exclude_columns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplatePart {
    Text(String),
    Database,
    Schema,
    Table,
}

/// The default routing key template.
pub const DEFAULT_TEMPLATE: &str = "{schema}.{table}";

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            template: parse_template(DEFAULT_TEMPLATE).unwrap_or_default(),
            exchange_map: Vec::new(),
            include_tables: Vec::new(),
            exclude_tables: Vec::new(),
            exclude_columns: Vec::new(),
        }
    }
}

fn parse_template(template: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_owned()));
        }
        let close =
            rest[open..].find('}').ok_or_else(|| format!("routing key template {template:?} has an unclosed '{{'"))?;
        parts.push(match &rest[open + 1..open + close] {
            "database" => TemplatePart::Database,
            "schema" => TemplatePart::Schema,
            "table" => TemplatePart::Table,
            other => {
                return Err(format!(
                    "routing key template {template:?} uses {{{other}}}; the placeholders are {{database}}, {{schema}} and {{table}}"
                ))
            }
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_owned()));
    }
    if !parts.contains(&TemplatePart::Table) {
        return Err(format!("routing key template {template:?} must contain {{table}}"));
    }
    Ok(parts)
}

impl RoutingConfig {
    /// Sets the routing key template (`{database}`, `{schema}`, `{table}`).
    pub fn set_template(&mut self, template: &str) -> Result<(), String> {
        self.template = parse_template(template)?;
        Ok(())
    }

    /// Parses `table-glob=exchange,...`.
    pub fn set_exchange_map(&mut self, entries: &[String]) -> Result<(), String> {
        self.exchange_map = entries
            .iter()
            .filter(|e| !e.trim().is_empty())
            .map(|entry| match entry.split_once('=') {
                Some((table, exchange)) if !table.trim().is_empty() && !exchange.trim().is_empty() => {
                    Ok((table.trim().to_owned(), exchange.trim().to_owned()))
                }
                _ => {
                    Err(format!("invalid exchange map entry {entry:?}: expected schema.table=exchange (globs allowed)"))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// Every exchange named in the map (to declare at connect).
    pub fn mapped_exchanges(&self) -> Vec<String> {
        let mut names: Vec<String> = self.exchange_map.iter().map(|(_, e)| e.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    fn routing_key(&self, database: &str, table: &TableRef) -> String {
        let mut key = String::with_capacity(table.qualified.len() + database.len() + 2);
        for part in &self.template {
            key.push_str(match part {
                TemplatePart::Text(text) => text,
                TemplatePart::Database => database,
                TemplatePart::Schema => &table.schema,
                TemplatePart::Table => &table.name,
            });
        }
        key
    }
}

/// What happens to one table's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub streamed: bool,
    pub routing_key: String,
    /// `None` for the producer's exchange.
    pub exchange: Option<Arc<str>>,
    /// Column globs that apply to this table (empty: keep every column).
    pub excluded_columns: Vec<Glob>,
}

impl Route {
    /// Whether a column is sent.
    pub fn keeps_column(&self, column: &str) -> bool {
        !self.excluded_columns.iter().any(|g| g.matches(column))
    }
}

/// Routes by table, computed on first use.
pub struct Router {
    config: RoutingConfig,
    database: String,
    /// PGTABLES (`schema.table`), empty for every table.
    listed: Vec<String>,
    include: Vec<Glob>,
    exclude: Vec<Glob>,
    exchanges: Vec<(Glob, Arc<str>)>,
    cache: HashMap<String, Arc<Route>>,
}

impl Router {
    pub fn new(config: RoutingConfig, database: &str, listed: Vec<String>) -> Router {
        let globs = |patterns: &[String]| patterns.iter().map(|p| Glob::new(p)).collect();
        Router {
            include: globs(&config.include_tables),
            exclude: globs(&config.exclude_tables),
            exchanges: config.exchange_map.iter().map(|(t, e)| (Glob::new(t), Arc::from(e.as_str()))).collect(),
            config,
            database: database.to_owned(),
            listed,
            cache: HashMap::new(),
        }
    }

    /// Whether `schema.table` is streamed (also used before streaming, e.g. by the snapshot).
    pub fn streams(&self, schema: &str, table: &str) -> bool {
        let qualified = format!("{schema}.{table}");
        schema != INTERNAL_SCHEMA
            && (self.listed.is_empty() || self.listed.contains(&qualified))
            && (self.include.is_empty() || self.include.iter().any(|g| g.matches(&qualified)))
            && !self.exclude.iter().any(|g| g.matches(&qualified))
    }

    pub fn route(&mut self, table: &TableRef) -> Arc<Route> {
        if let Some(route) = self.cache.get(&table.qualified) {
            return route.clone();
        }
        let excluded_columns = self
            .config
            .exclude_columns
            .iter()
            .filter_map(|pattern| match pattern.rsplit_once('.') {
                None => Some(Glob::new(pattern)),
                Some((table_pattern, column)) if Glob::new(table_pattern).matches(&table.qualified) => {
                    Some(Glob::new(column))
                }
                Some(_) => None,
            })
            .collect();
        let route = Arc::new(Route {
            streamed: self.streams(&table.schema, &table.name),
            routing_key: self.config.routing_key(&self.database, table),
            exchange: self.exchanges.iter().find(|(g, _)| g.matches(&table.qualified)).map(|(_, e)| e.clone()),
            excluded_columns,
        });
        self.cache.insert(table.qualified.clone(), route.clone());
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(config: RoutingConfig, listed: &[&str]) -> Router {
        Router::new(config, "app", listed.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn routing_keys_follow_the_template() {
        let t = TableRef::new("public", "users");
        assert_eq!(router(RoutingConfig::default(), &[]).route(&t).routing_key, "public.users");
        let mut config = RoutingConfig::default();
        config.set_template("{database}.{schema}.{table}").unwrap();
        assert_eq!(router(config.clone(), &[]).route(&t).routing_key, "app.public.users");
        config.set_template("cdc-{table}").unwrap();
        assert_eq!(router(config.clone(), &[]).route(&t).routing_key, "cdc-users");
        assert!(config.set_template("{schema}.{tabel}").unwrap_err().contains("{tabel}"));
        assert!(config.set_template("{schema}").unwrap_err().contains("must contain {table}"));
        assert!(config.set_template("{table").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn tables_are_filtered_by_list_and_globs_and_never_internal() {
        let config = RoutingConfig {
            include_tables: vec!["public.*".into(), "audit.log".into()],
            exclude_tables: vec!["public.tmp_*".into()],
            ..RoutingConfig::default()
        };
        let r = router(config, &[]);
        assert!(r.streams("public", "users"));
        assert!(r.streams("audit", "log"));
        assert!(!r.streams("audit", "other"));
        assert!(!r.streams("public", "tmp_import"));
        let all = router(RoutingConfig::default(), &[]);
        assert!(!all.streams("pgevents", "work_item"));
        let listed = router(RoutingConfig::default(), &["public.a"]);
        assert!(listed.streams("public", "a") && !listed.streams("public", "b"));
    }

    #[test]
    fn exchanges_and_excluded_columns_are_per_table() {
        let mut config = RoutingConfig::default();
        config.set_exchange_map(&["public.orders=orders_x".into(), "audit.*=audit_x".into()]).unwrap();
        config.exclude_columns = vec!["password_hash".into(), "public.users.secret_*".into()];
        assert_eq!(config.mapped_exchanges(), vec!["audit_x".to_string(), "orders_x".to_string()]);
        let mut r = router(config.clone(), &[]);
        let users = r.route(&TableRef::new("public", "users"));
        assert_eq!(users.exchange, None);
        assert!(
            !users.keeps_column("password_hash") && !users.keeps_column("secret_key") && users.keeps_column("name")
        );
        let orders = r.route(&TableRef::new("public", "orders"));
        assert_eq!(orders.exchange.as_deref(), Some("orders_x"));
        assert!(orders.keeps_column("secret_key") && !orders.keeps_column("password_hash"));
        assert_eq!(r.route(&TableRef::new("audit", "x")).exchange.as_deref(), Some("audit_x"));
        assert!(config.set_exchange_map(&["nonsense".into()]).is_err());
    }
}
