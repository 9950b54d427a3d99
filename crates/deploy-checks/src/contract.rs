//! The configuration contract: the README's "Configuration" table, which
//! names every environment variable, the service(s) that read it, and its
//! default. The services' parsers take unknown variables silently (a typo
//! such as `NSQLOOKUPD_HTTP_ADDRESS` would be ignored and the default used),
//! so the names a compose file passes are checked against this table.

/// One row of the table, with one name (a row naming two variables, such
/// as `BATCH_SIZE`, `BATCH_MAX_WAIT_MS`, becomes two).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    /// `api`, `consumer` or both.
    pub services: Vec<String>,
    /// The default column as written (`—  (required)`, `` `127.0.0.1:4150` ``, ...).
    pub default: String,
}

impl Variable {
    pub fn read_by(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }

    pub fn required(&self) -> bool {
        self.default.contains("required")
    }

    /// A default that means "this machine": wrong inside a container, where
    /// it is the container itself.
    pub fn defaults_to_loopback(&self) -> bool {
        self.default.contains("127.0.0.1") || self.default.contains("localhost")
    }
}

/// The short service names the table uses for the compose services.
pub fn table_name(compose_service: &str) -> Option<&'static str> {
    match compose_service {
        "accounts-api" => Some("api"),
        "audit-consumer" => Some("consumer"),
        _ => None,
    }
}

/// Reads the table under the README's `## Configuration` heading.
pub fn from_readme(readme: &str) -> Result<Vec<Variable>, String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Configuration"))
        .ok_or("the README has no \"## Configuration\" section")?;
    let mut variables = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [names, service, default, ..] = cells.as_slice() else {
            return Err(format!("a configuration row has too few cells: {line}"));
        };
        let services = match *service {
            "both" => vec!["api".to_owned(), "consumer".to_owned()],
            "api" | "consumer" => vec![(*service).to_owned()],
            // Anything else would be a new way of writing the table: better
            // to stop than to guess who reads the variable.
            other => return Err(format!("unknown service {other:?} in: {line}")),
        };
        for name in names.split(',').map(|n| n.trim().trim_matches('`')) {
            if !crate::env_file::is_name(name) || name.to_ascii_uppercase() != name {
                return Err(format!("{name:?} is not a variable name, in: {line}"));
            }
            variables.push(Variable {
                name: name.to_owned(),
                services: services.clone(),
                default: (*default).to_owned(),
            });
        }
    }
    if variables.is_empty() {
        return Err("the README's configuration table has no rows".into());
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_with_every_name_its_services_and_default() {
        let readme = "# X\n\n## Configuration\n\ntext\n\n| name | service | default | meaning |\n|---|---|---|---|\n\
            | `DATABASE_URL` | both | — (required) | url |\n\
            | `AUTH_JWT_ISSUER`, `AUTH_JWT_AUDIENCE` | api | unset | checked |\n\
            | `NSQLOOKUPD_HTTP_ADDRESSES` | consumer | `127.0.0.1:4161` | list |\n\n## Operations\n\n| `NOT_CONFIG` | x | y |\n";
        let vars = from_readme(readme).unwrap();
        let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "DATABASE_URL",
                "AUTH_JWT_ISSUER",
                "AUTH_JWT_AUDIENCE",
                "NSQLOOKUPD_HTTP_ADDRESSES"
            ]
        );
        assert!(vars[0].required() && vars[0].read_by("api") && vars[0].read_by("consumer"));
        assert!(vars[2].read_by("api") && !vars[2].read_by("consumer") && !vars[2].required());
        assert!(vars[3].defaults_to_loopback());
    }

    #[test]
    fn a_table_it_cannot_read_is_an_error_not_an_empty_contract() {
        assert!(from_readme("# X\n").is_err());
        assert!(from_readme("## Configuration\n\nnone yet\n").is_err());
        assert!(from_readme("## Configuration\n| `A` | worker | 1 | x |\n").is_err());
    }
}
