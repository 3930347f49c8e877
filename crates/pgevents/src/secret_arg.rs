//! A command-line value that holds a credential (a password, a URL or connection string with
//! one): parsed as text, shown by `Debug` as `***`, so that printing the arguments never
//! prints it.

use std::convert::Infallible;
use std::str::FromStr;

#[derive(Clone, PartialEq, Eq)]
pub struct SecretArg(String);

impl SecretArg {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretArg {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<SecretArg, Infallible> {
        Ok(SecretArg(s.to_owned()))
    }
}

impl From<&str> for SecretArg {
    fn from(s: &str) -> SecretArg {
        SecretArg(s.to_owned())
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    #[test]
    fn debug_of_the_arguments_never_shows_a_credential() {
        let cli = Cli::try_parse_from([
            "pgevents",
            "worker",
            "--pgpassword",
            "pg-p4ss",
            "--pg-dsn",
            "postgres://u:dsn-p4ss@db/app",
            "--rabbitmq-url",
            "amqp://u:mq-p4ss@mq/%2f",
        ])
        .unwrap();
        let text = format!("{cli:?}");
        for secret in ["pg-p4ss", "dsn-p4ss", "mq-p4ss"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
