//! Compose files loaded as `docker compose` loads them (YAML, merge keys,
//! interpolation, then the schema), and read through small typed accessors.
//!
//! The accessors cover the syntax these files use and refuse the rest with
//! an error, rather than guess: a check that misreads a file is worse than
//! one that asks for it to be written plainly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use crate::interpolation::interpolate_json;
use crate::schema::ComposeSchema;

/// Reads, interpolates and validates one compose file. Errors are complete
/// sentences naming the file.
pub fn load_file(
    path: &Path,
    vars: &BTreeMap<String, String>,
    schema: &ComposeSchema,
) -> Result<Value, String> {
    let name = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mut yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("{name} is not valid YAML: {e}"))?;
    yaml.apply_merge()
        .map_err(|e| format!("{name}: a YAML merge key (<<) cannot be applied: {e}"))?;
    let mut doc = serde_json::to_value(&yaml)
        .map_err(|e| format!("{name} has YAML that has no JSON form (Compose needs one): {e}"))?;
    interpolate_json(&mut doc, vars).map_err(|(at, e)| format!("{name}, at {at}: {e}"))?;
    let violations = schema.violations(&doc);
    if !violations.is_empty() {
        return Err(format!(
            "{name} breaks the Compose specification:\n  {}",
            violations.join("\n  ")
        ));
    }
    Ok(doc)
}

/// Several compose files taken together, as `docker compose -f a -f b`
/// takes them. Compose merges a service named in two files key by key;
/// these files never name one twice (that is checked here), so the merge is
/// a union and needs no merge rules.
#[derive(Debug)]
pub struct Project {
    pub services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level of any file.
    pub volumes: BTreeSet<String>,
}

impl Project {
    /// Loads `files` (relative to `root`) with the variables of `env_file`.
    pub fn load(root: &Path, files: &[&str], env_file: &str) -> Result<Project, String> {
        let env_path = root.join(env_file);
        let env_text = std::fs::read_to_string(&env_path)
            .map_err(|e| format!("cannot read {}: {e}", env_path.display()))?;
        let vars = crate::env_file::parse(&env_text).map_err(|e| format!("{env_file}, {e}"))?;
        let schema = ComposeSchema::load()?;

        let mut project = Project {
            services: BTreeMap::new(),
            volumes: BTreeSet::new(),
        };
        for file in files {
            let doc = load_file(&root.join(file), &vars, &schema)?;
            if let Some(services) = doc.get("services").and_then(Value::as_object) {
                for (name, value) in services {
                    if let Some(first) = project.services.get(name) {
                        return Err(format!(
                            "service {name} is defined in both {} and {file}; keep each service in one file",
                            first.file
                        ));
                    }
                    project.services.insert(
                        name.clone(),
                        Service {
                            name: name.clone(),
                            file: (*file).to_owned(),
                            value: value.clone(),
                        },
                    );
                }
            }
            if let Some(volumes) = doc.get("volumes").and_then(Value::as_object) {
                project.volumes.extend(volumes.keys().cloned());
            }
        }
        Ok(project)
    }

    pub fn service(&self, name: &str) -> Result<&Service, String> {
        self.services
            .get(name)
            .ok_or_else(|| format!("no service named {name} in the compose files"))
    }
}

/// One service of a compose file, after interpolation.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// The compose file that defines it.
    pub file: String,
    value: Value,
}

/// A service's `build:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub context: String,
    /// Relative to the context, `Dockerfile` when not given.
    pub dockerfile: String,
}

/// How a health check runs its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `["CMD", program, args...]`: run directly, no shell.
    Exec(Vec<String>),
    /// `["CMD-SHELL", "..."]` or a plain string: run with `/bin/sh -c`.
    Shell(String),
    /// `["NONE"]` or `disable: true`.
    Disabled,
}

/// A service's health check as the compose file writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: HealthTest,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u64>,
    pub start_period: Option<String>,
}

/// A volume or bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// A volume name, or a host path for a bind mount.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    pub bind: bool,
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(&self) -> Option<u16> {
        (self.start == self.end).then_some(self.start)
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.start..=self.end).contains(&port)
    }
}

/// One entry of `ports:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// The host address it is published on; all addresses when `None`.
    pub host_ip: Option<String>,
    /// The host port(s); a random free port when `None`.
    pub published: Option<PortRange>,
    /// The container port(s).
    pub target: PortRange,
    pub protocol: String,
}

impl Service {
    fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key)
    }

    fn error(&self, message: impl std::fmt::Display) -> String {
        format!("{} (in {}): {message}", self.name, self.file)
    }

    /// Whether the service sets `key` at all.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A string-valued key such as `image`, `restart` or `container_name`.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn build(&self) -> Result<Option<Build>, String> {
        match self.get("build") {
            None => Ok(None),
            Some(Value::String(context)) => Ok(Some(Build {
                context: context.clone(),
                dockerfile: "Dockerfile".into(),
            })),
            Some(build) => {
                let context = build
                    .get("context")
                    .and_then(Value::as_str)
                    .ok_or_else(|| self.error("build has no context"))?;
                Ok(Some(Build {
                    context: context.to_owned(),
                    dockerfile: build
                        .get("dockerfile")
                        .and_then(Value::as_str)
                        .unwrap_or("Dockerfile")
                        .to_owned(),
                }))
            }
        }
    }

    /// The `environment:` the service is given, map or list syntax. A name
    /// without a value is refused: Compose would copy it from the shell that
    /// runs `docker compose`, so what the service gets would depend on who
    /// starts it. `env_file:` is refused for the same reason.
    pub fn environment(&self) -> Result<BTreeMap<String, String>, String> {
        if self.has("env_file") {
            return Err(self.error(
                "env_file hides the variables from these checks; list them under environment",
            ));
        }
        let mut vars = BTreeMap::new();
        let mut add = |name: &str, value: String| {
            if vars.insert(name.to_owned(), value).is_some() {
                return Err(self.error(format!("{name} is set twice in environment")));
            }
            Ok(())
        };
        match self.get("environment") {
            None => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let value = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(self.error(format!(
                                "{name} has no value, so Compose would take it from the shell; give it one"
                            )))
                        }
                    };
                    add(name, value)?;
                }
            }
            Some(Value::Array(list)) => {
                for entry in list {
                    let entry = entry
                        .as_str()
                        .ok_or_else(|| self.error("an environment entry is not a string"))?;
                    let (name, value) = entry.split_once('=').ok_or_else(|| {
                        self.error(format!(
                            "{entry} has no value, so Compose would take it from the shell; give it one"
                        ))
                    })?;
                    add(name, value.to_owned())?;
                }
            }
            Some(_) => return Err(self.error("environment is neither a map nor a list")),
        }
        Ok(vars)
    }

    /// The `command:` words. A string command is split on whitespace;
    /// quotes are refused (write the list form instead).
    pub fn command(&self) -> Result<Vec<String>, String> {
        match self.get("command") {
            None => Ok(Vec::new()),
            Some(Value::String(line)) => {
                if line.contains(['"', '\'', '\\']) {
                    return Err(self.error("write a command with quotes in the list form"));
                }
                Ok(line.split_whitespace().map(str::to_owned).collect())
            }
            Some(Value::Array(words)) => words
                .iter()
                .map(|w| {
                    w.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.error("a command word is not a string"))
                })
                .collect(),
            Some(_) => Err(self.error("command is neither a string nor a list")),
        }
    }

    /// The value of a Go-style flag in `command:` (`-name=v`, `--name=v`,
    /// `-name v`, `--name v`), if it is given.
    pub fn flag(&self, name: &str) -> Result<Option<String>, String> {
        let words = self.command()?;
        let mut found = None;
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let Some(flag) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) else {
                continue;
            };
            let value = match flag.split_once('=') {
                Some((flag_name, value)) if flag_name == name => value.to_owned(),
                None if flag == name => words
                    .next()
                    .cloned()
                    .ok_or_else(|| self.error(format!("--{name} has no value")))?,
                _ => continue,
            };
            if found.replace(value).is_some() {
                return Err(self.error(format!("--{name} is given twice")));
            }
        }
        Ok(found)
    }

    pub fn ports(&self) -> Result<Vec<PortMapping>, String> {
        let Some(list) = self.get("ports") else {
            return Ok(Vec::new());
        };
        let list = list
            .as_array()
            .ok_or_else(|| self.error("ports is not a list"))?;
        list.iter()
            .map(|entry| match entry {
                Value::String(spec) => parse_port(spec).map_err(|e| self.error(e)),
                Value::Number(n) => parse_port(&n.to_string()).map_err(|e| self.error(e)),
                Value::Object(long) => {
                    let target = long
                        .get("target")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or_else(|| self.error("a long-syntax port has no valid target"))?;
                    let published = match long.get("published") {
                        None => None,
                        Some(Value::Number(n)) => {
                            Some(parse_range(&n.to_string()).map_err(|e| self.error(e))?)
                        }
                        Some(Value::String(s)) => Some(parse_range(s).map_err(|e| self.error(e))?),
                        Some(_) => {
                            return Err(self.error("published is neither a number nor a string"))
                        }
                    };
                    Ok(PortMapping {
                        host_ip: long
                            .get("host_ip")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        published,
                        target: PortRange {
                            start: target,
                            end: target,
                        },
                        protocol: long
                            .get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("tcp")
                            .to_owned(),
                    })
                }
                _ => Err(self.error("a ports entry is neither a string nor a map")),
            })
            .collect()
    }

    pub fn expose(&self) -> Result<Vec<PortRange>, String> {
        let Some(list) = self.get("expose") else {
            return Ok(Vec::new());
        };
        list.as_array()
            .ok_or_else(|| self.error("expose is not a list"))?
            .iter()
            .map(|entry| {
                let spec = match entry {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(self.error("an expose entry is neither a string nor a number")),
                };
                parse_expose(&spec).map_err(|e| self.error(e))
            })
            .collect()
    }

    /// The compose-level health check, if the file sets one (an image's own
    /// `HEALTHCHECK` applies otherwise).
    pub fn healthcheck(&self) -> Result<Option<Healthcheck>, String> {
        let Some(check) = self.get("healthcheck") else {
            return Ok(None);
        };
        let text = |key: &str| check.get(key).and_then(Value::as_str).map(str::to_owned);
        let disabled = check.get("disable").and_then(Value::as_bool) == Some(true);
        let test = match check.get("test") {
            _ if disabled => HealthTest::Disabled,
            Some(Value::String(line)) => HealthTest::Shell(line.clone()),
            Some(Value::Array(words)) => {
                let words: Vec<String> = words
                    .iter()
                    .map(|w| w.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| self.error("a healthcheck test word is not a string"))?;
                match words.split_first() {
                    Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => {
                        HealthTest::Exec(rest.to_vec())
                    }
                    Some((kind, [line])) if kind == "CMD-SHELL" => HealthTest::Shell(line.clone()),
                    Some((kind, [])) if kind == "NONE" => HealthTest::Disabled,
                    _ => {
                        return Err(self.error(
                            "a healthcheck test list must start with CMD, CMD-SHELL or NONE",
                        ))
                    }
                }
            }
            _ => return Err(self.error("healthcheck has no test")),
        };
        Ok(Some(Healthcheck {
            test,
            interval: text("interval"),
            timeout: text("timeout"),
            retries: check.get("retries").and_then(Value::as_u64),
            start_period: text("start_period"),
        }))
    }

    /// `depends_on`, each with its condition (`service_started` for the
    /// list syntax).
    pub fn depends_on(&self) -> Result<Vec<(String, String)>, String> {
        match self.get("depends_on") {
            None => Ok(Vec::new()),
            Some(Value::Array(names)) => names
                .iter()
                .map(|n| {
                    n.as_str()
                        .map(|n| (n.to_owned(), "service_started".to_owned()))
                        .ok_or_else(|| self.error("a depends_on entry is not a string"))
                })
                .collect(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(name, spec)| {
                    spec.get("condition")
                        .and_then(Value::as_str)
                        .map(|c| (name.clone(), c.to_owned()))
                        .ok_or_else(|| self.error(format!("depends_on {name} has no condition")))
                })
                .collect(),
            Some(_) => Err(self.error("depends_on is neither a list nor a map")),
        }
    }

    pub fn volumes(&self) -> Result<Vec<Mount>, String> {
        let Some(list) = self.get("volumes") else {
            return Ok(Vec::new());
        };
        list.as_array()
            .ok_or_else(|| self.error("volumes is not a list"))?
            .iter()
            .map(|entry| match entry {
                Value::String(spec) => {
                    let parts: Vec<&str> = spec.split(':').collect();
                    let (source, target, mode) = match parts.as_slice() {
                        [source, target] => (*source, *target, ""),
                        [source, target, mode] => (*source, *target, *mode),
                        _ => {
                            return Err(self.error(format!("{spec:?} is not source:target[:mode]")))
                        }
                    };
                    Ok(Mount {
                        source: source.to_owned(),
                        target: target.to_owned(),
                        read_only: mode.split(',').any(|m| m == "ro"),
                        bind: source.starts_with(['.', '/', '~']),
                    })
                }
                Value::Object(long) => {
                    let field = |key: &str| {
                        long.get(key)
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned()
                    };
                    Ok(Mount {
                        source: field("source"),
                        target: field("target"),
                        read_only: long.get("read_only").and_then(Value::as_bool) == Some(true),
                        bind: field("type") == "bind",
                    })
                }
                _ => Err(self.error("a volumes entry is neither a string nor a map")),
            })
            .collect()
    }
}

/// One `ports:` entry in short syntax:
/// `[[host_ip:][host_port[-end]]:]container_port[-end][/protocol]`, with an
/// IPv6 host address in brackets.
pub fn parse_port(spec: &str) -> Result<PortMapping, String> {
    let fail = |why: &str| format!("port {spec:?}: {why}");
    let (mapping, protocol) = split_protocol(spec).map_err(|e| fail(&e))?;
    let (host_ip, ports) = match mapping.strip_prefix('[') {
        Some(rest) => {
            let (ip, rest) = rest
                .split_once("]:")
                .ok_or_else(|| fail("an IPv6 address needs ]:"))?;
            (Some(ip.to_owned()), rest)
        }
        None => (None, mapping),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, published, target) = match (host_ip, parts.as_slice()) {
        (None, [target]) => (None, None, *target),
        (None, [published, target]) => (None, Some(*published), *target),
        (None, [ip, published, target]) => (Some((*ip).to_owned()), Some(*published), *target),
        (Some(ip), [published, target]) => (Some(ip), Some(*published), *target),
        _ => return Err(fail("expected [[ip:]host:]container")),
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| fail(&format!("{ip:?} is not an IP address")))?;
    }
    let target = parse_range(target).map_err(|e| fail(&e))?;
    let published = match published {
        None | Some("") => None,
        Some(p) => Some(parse_range(p).map_err(|e| fail(&e))?),
    };
    if let Some(published) = published {
        let width = |r: PortRange| r.end - r.start;
        // A host range for one container port lets Docker pick a free one
        // (what a scaled service needs); a container range maps one to one.
        if target.single().is_none() && width(published) != width(target) {
            return Err(fail(
                "a host port range must be as wide as the container range",
            ));
        }
    }
    Ok(PortMapping {
        host_ip,
        published,
        target,
        protocol: protocol.to_owned(),
    })
}

/// One `expose:` entry: `port[-end][/protocol]`.
pub fn parse_expose(spec: &str) -> Result<PortRange, String> {
    let (ports, _) = split_protocol(spec).map_err(|e| format!("expose {spec:?}: {e}"))?;
    parse_range(ports).map_err(|e| format!("expose {spec:?}: {e}"))
}

fn split_protocol(spec: &str) -> Result<(&str, &str), String> {
    match spec.rsplit_once('/') {
        None => Ok((spec, "tcp")),
        Some((ports, protocol @ ("tcp" | "udp" | "sctp"))) => Ok((ports, protocol)),
        Some((_, other)) => Err(format!("{other:?} is not tcp, udp or sctp")),
    }
}

fn parse_range(text: &str) -> Result<PortRange, String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{p:?} is not a port from 1 to 65535"))
    };
    match text.split_once('-') {
        None => {
            let p = port(text)?;
            Ok(PortRange { start: p, end: p })
        }
        Some((start, end)) => {
            let (start, end) = (port(start)?, port(end)?);
            if start > end {
                return Err(format!("{text:?} is a range that ends before it starts"));
            }
            Ok(PortRange { start, end })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: Value) -> Service {
        Service {
            name: "svc".into(),
            file: "test.yaml".into(),
            value,
        }
    }

    #[test]
    fn short_port_syntax_is_read_with_addresses_ranges_and_protocols() {
        let p = parse_port("127.0.0.1:4150:4150").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.published.and_then(|r| r.single()), Some(4150));
        assert_eq!(p.target.single(), Some(4150));
        let p = parse_port("8080").unwrap();
        assert_eq!((p.published, p.target.single()), (None, Some(8080)));
        let p = parse_port("127.0.0.1::8081").unwrap();
        assert_eq!(p.published, None);
        let p = parse_port("8100-8109:8081").unwrap();
        assert_eq!(
            p.published,
            Some(PortRange {
                start: 8100,
                end: 8109
            })
        );
        let p = parse_port("[::1]:53:53/udp").unwrap();
        assert_eq!(
            (p.host_ip.as_deref(), p.protocol.as_str()),
            (Some("::1"), "udp")
        );
        for bad in [
            "",
            "0",
            "70000",
            "8080:80:80",
            "host:80:80",
            "80/ftp",
            "90-80:90-80",
            "8000-8002:80-81",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_in_either_syntax_is_read_and_values_from_the_shell_are_refused() {
        let map = service(json!({"environment": {"A": "1", "B": 2, "C": true}}));
        let env = map.environment().unwrap();
        assert_eq!(
            (env["A"].as_str(), env["B"].as_str(), env["C"].as_str()),
            ("1", "2", "true")
        );
        let list = service(json!({"environment": ["A=1", "B=x=y", "C="]}));
        let env = list.environment().unwrap();
        assert_eq!((env["B"].as_str(), env["C"].as_str()), ("x=y", ""));
        assert!(service(json!({"environment": {"A": null}}))
            .environment()
            .is_err());
        assert!(service(json!({"environment": ["A"]}))
            .environment()
            .is_err());
        assert!(service(json!({"environment": ["A=1", "A=2"]}))
            .environment()
            .is_err());
        assert!(service(json!({"env_file": ".env"})).environment().is_err());
    }

    #[test]
    fn go_style_flags_are_found_in_either_spelling() {
        let s = service(
            json!({"command": ["/nsqd", "--tcp-address=0.0.0.0:4150", "-data-path", "/data", "--verbose"]}),
        );
        assert_eq!(
            s.flag("tcp-address").unwrap().as_deref(),
            Some("0.0.0.0:4150")
        );
        assert_eq!(s.flag("data-path").unwrap().as_deref(), Some("/data"));
        assert_eq!(s.flag("http-address").unwrap(), None);
        let twice = service(json!({"command": "/nsqd --a=1 -a=2"}));
        assert!(twice.flag("a").is_err());
    }

    #[test]
    fn health_checks_depends_on_and_volumes_are_read_in_both_syntaxes() {
        let s = service(json!({
            "healthcheck": {"test": ["CMD", "pg_isready", "-h", "127.0.0.1"], "interval": "5s", "retries": 3},
            "depends_on": {"db": {"condition": "service_healthy"}},
            "volumes": ["data:/var/lib/data", "./init.sql:/docker-entrypoint-initdb.d/init.sql:ro"],
        }));
        let check = s.healthcheck().unwrap().unwrap();
        assert_eq!(
            check.test,
            HealthTest::Exec(vec!["pg_isready".into(), "-h".into(), "127.0.0.1".into()])
        );
        assert_eq!(
            (check.interval.as_deref(), check.retries),
            (Some("5s"), Some(3))
        );
        assert_eq!(
            s.depends_on().unwrap(),
            [("db".to_owned(), "service_healthy".to_owned())]
        );
        let mounts = s.volumes().unwrap();
        assert!(!mounts[0].bind && !mounts[0].read_only);
        assert!(mounts[1].bind && mounts[1].read_only);

        let shell = service(
            json!({"healthcheck": {"test": "wget -q -O- http://127.0.0.1/ping"}, "depends_on": ["db"]}),
        );
        assert!(matches!(
            shell.healthcheck().unwrap().unwrap().test,
            HealthTest::Shell(_)
        ));
        assert_eq!(shell.depends_on().unwrap()[0].1, "service_started");
    }
}
