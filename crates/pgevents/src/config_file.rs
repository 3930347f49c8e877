//! `--config FILE` (or `PGEVENTS_CONFIG`): settings from a TOML file, with precedence
//! flags > environment > file.
//!
//! Keys are the long option names (`pghost`, `rabbitmq-url`, `pgtables`, ...). Top-level keys
//! apply to every subcommand that has the option; a `[producer]`, `[consumer_debug]` or
//! `[check]` table applies to that subcommand only. The file is applied before the command line
//! is parsed by setting each option's environment variable when it is not set already, so flags
//! still win over it and real environment variables too. Unknown keys are an error.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::CommandFactory;

use crate::cli::Cli;

/// Options whose environment variable clap does not read itself.
const EXTRA_ENV: &[(&str, &str)] = &[("pgslot", "PGSLOT")];

/// The config file named on the command line (`--config F`, `--config=F`) or in `PGEVENTS_CONFIG`.
pub fn path_from(args: &[OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("PGEVENTS_CONFIG").filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// The subcommand named in `args` (its canonical name), if any.
fn subcommand(args: &[OsString]) -> Option<String> {
    let cli = Cli::command();
    args.iter().skip(1).find_map(|arg| {
        let text = arg.to_string_lossy();
        cli.get_subcommands()
            .find(|c| c.get_name() == text || c.get_all_aliases().any(|a| a == text))
            .map(|c| c.get_name().to_owned())
    })
}

/// Environment variables each option of a subcommand reads, by long name and alias.
fn option_envs(command: &clap::Command) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let env = arg
            .get_env()
            .map(|e| e.to_string_lossy().into_owned())
            .or_else(|| EXTRA_ENV.iter().find(|(name, _)| *name == long).map(|(_, env)| env.to_string()));
        let Some(env) = env else { continue };
        out.push((long.to_owned(), env.clone()));
        for alias in arg.get_all_aliases().unwrap_or_default() {
            out.push((alias.to_owned(), env.clone()));
        }
    }
    out
}

fn value_text(key: &str, value: &toml::Value) -> anyhow::Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => {
            items.iter().map(|item| value_text(key, item)).collect::<anyhow::Result<Vec<_>>>()?.join(",")
        }
        other => bail!(
            "config key {key:?}: a {} is not a valid value; use a string, number, boolean or array",
            other.type_str()
        ),
    })
}

/// The environment variables the file sets for `command`: `(variable, value)`.
pub fn assignments(text: &str, command_name: &str) -> anyhow::Result<Vec<(String, String)>> {
    let table: toml::Table = text.parse().context("invalid TOML")?;
    let cli = Cli::command();
    let global = option_envs(&cli);
    let per_command: Vec<(String, Vec<(String, String)>)> =
        cli.get_subcommands().map(|c| (c.get_name().to_owned(), option_envs(c))).collect();
    let current = per_command.iter().find(|(name, _)| name == command_name).map(|(_, o)| o.as_slice()).unwrap_or(&[]);
    let known_anywhere: BTreeSet<&str> =
        global.iter().chain(per_command.iter().flat_map(|(_, o)| o.iter())).map(|(k, _)| k.as_str()).collect();
    let lookup = |options: &[(String, String)], key: &str| {
        options.iter().find(|(k, _)| k == key || k.replace('-', "_") == key).map(|(_, env)| env.clone())
    };
    let mut out = Vec::new();
    // Top-level keys first, then sections, so that a command's own section wins.
    let mut entries: Vec<(&String, &toml::Value)> = table.iter().collect();
    entries.sort_by_key(|(_, value)| value.is_table());
    for (key, value) in entries {
        if let toml::Value::Table(section) = value {
            let Some((_, options)) = per_command.iter().find(|(name, _)| name == key || name.replace('_', "-") == *key)
            else {
                let names: Vec<&str> = per_command.iter().map(|(n, _)| n.as_str()).collect();
                bail!("unknown section [{key}] in the config file; sections are {}", names.join(", "));
            };
            for (inner, v) in section {
                let env = lookup(options, inner).or_else(|| lookup(&global, inner)).with_context(|| {
                    format!("unknown key {inner:?} in section [{key}] of the config file; keys are the long option names, see `pgevents {key} --help`")
                })?;
                if key == command_name || key.replace('-', "_") == command_name {
                    out.push((env, value_text(inner, v)?));
                }
            }
        } else {
            match lookup(current, key).or_else(|| lookup(&global, key)) {
                Some(env) => out.push((env, value_text(key, value)?)),
                None if known_anywhere.contains(key.as_str())
                    || known_anywhere.contains(key.replace('_', "-").as_str()) => {}
                None => bail!("unknown key {key:?} in the config file; keys are the long option names (see --help)"),
            }
        }
    }
    // The last assignment of a variable wins.
    let mut seen = BTreeSet::new();
    out.reverse();
    out.retain(|(env, _)| seen.insert(env.clone()));
    out.reverse();
    Ok(out)
}

/// Reads the config file, if one is named, and sets the environment variables it implies that
/// are not set yet. Must run before any other thread starts.
pub fn apply(args: &[OsString]) -> anyhow::Result<()> {
    let Some(path) = path_from(args) else { return Ok(()) };
    let text = read(&path)?;
    let command = subcommand(args).unwrap_or_default();
    for (env, value) in assignments(&text, &command).with_context(|| format!("config file {}", path.display()))? {
        if std::env::var_os(&env).is_none() {
            std::env::set_var(env, value);
        }
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_environment_variables() {
        let text = r#"
            rabbitmq-url = "amqp://u:p@broker:5672/%2f"
            log-format = "json"
            binding-keys = ["public.*"]
            [producer]
            pghost = "db"
            pg_port = 6543
            pgtables = ["public.users", "public.orders"]
            pgslot = "main"
            mandatory = true
            rabbitmq-url = "amqp://producer@broker/%2f"
        "#;
        let producer = assignments(text, "producer").unwrap();
        let get = |env: &str| producer.iter().find(|(e, _)| e == env).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGTABLES"), Some("public.users,public.orders"));
        assert_eq!(get("PGSLOT"), Some("main"));
        assert_eq!(get("RABBITMQ_MANDATORY"), Some("true"));
        assert_eq!(get("PGEVENTS_LOG_FORMAT"), Some("json"));
        assert_eq!(get("RABBITMQ_URL"), Some("amqp://producer@broker/%2f"), "the section wins");
        assert_eq!(get("RABBITMQ_BINDING_KEYS"), None, "a consumer option does not reach the producer");
        let consumer = assignments(text, "consumer_debug").unwrap();
        assert!(consumer.contains(&("RABBITMQ_BINDING_KEYS".into(), "public.*".into())));
        assert!(!consumer.iter().any(|(e, _)| e == "PGHOST"));
    }

    #[test]
    fn unknown_keys_and_sections_are_errors() {
        let e = assignments("pghots = \"x\"", "producer").unwrap_err().to_string();
        assert!(e.contains("unknown key \"pghots\""), "{e}");
        let e = assignments("[producr]\npghost = \"x\"", "producer").unwrap_err().to_string();
        assert!(e.contains("unknown section [producr]"), "{e}");
        let e = assignments("[producer]\nbinding-keys = \"#\"", "producer").unwrap_err().to_string();
        assert!(e.contains("unknown key \"binding-keys\" in section [producer]"), "{e}");
        let e = format!("{:#}", assignments("pghost = ", "producer").unwrap_err());
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn finds_the_path() {
        let args: Vec<OsString> = ["pgevents", "producer", "--config", "a.toml"].iter().map(OsString::from).collect();
        assert_eq!(path_from(&args), Some(PathBuf::from("a.toml")));
        let args: Vec<OsString> = ["pgevents", "--config=b.toml", "producer"].iter().map(OsString::from).collect();
        assert_eq!(path_from(&args), Some(PathBuf::from("b.toml")));
        assert_eq!(subcommand(&args).as_deref(), Some("producer"));
    }
}
