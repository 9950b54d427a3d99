//! The standard OpenTelemetry variables a service reads, parsed into a
//! [`TraceConfig`]. A bad value is an error naming its variable, like every
//! other setting of the services; an empty value counts as unset.

use std::fmt;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_SERVICE_NAME`.
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_TRACES_SAMPLER`.
pub const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`.
pub const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Longest accepted `OTEL_SERVICE_NAME`, in characters.
const MAX_SERVICE_NAME_CHARS: usize = 255;

/// What a service needs to know to trace: where to send spans (if
/// anywhere), under which name, and which traces to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The collector's OTLP/HTTP base URL, without the `/v1/traces` the
    /// exporter appends. `None` (the variable unset): no span is made,
    /// nothing is exported, and events carry no `traceparent`.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`; `None` means the program's own name.
    pub service_name: Option<String>,
    pub sampler: Sampler,
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, as the
/// OpenTelemetry specification defines them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// `parentbased_*`: a span with a parent (an incoming `traceparent`, or
    /// the event's) follows the parent's decision; `root` decides only for
    /// new traces.
    pub parent_based: bool,
    pub root: RootSampler,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    /// Keeps this fraction of traces (0.0 to 1.0), chosen by trace id, so
    /// every service makes the same choice for one trace.
    TraceIdRatio(f64),
}

impl Default for Sampler {
    /// `parentbased_always_on`, the specification's default.
    fn default() -> Self {
        Sampler {
            parent_based: true,
            root: RootSampler::AlwaysOn,
        }
    }
}

/// A variable with a value tracing cannot use. Its `Display` is one line
/// that names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct TraceConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl TraceConfig {
    /// Tracing off: what an unset `OTEL_EXPORTER_OTLP_ENDPOINT` means.
    pub fn disabled() -> TraceConfig {
        TraceConfig {
            endpoint: None,
            service_name: None,
            sampler: Sampler::default(),
        }
    }

    /// Spans are made and exported.
    pub fn is_enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<TraceConfig, TraceConfigError> {
        TraceConfig::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Reads the four variables from `vars` (other names are ignored), so
    /// a service can parse its whole environment in one place.
    pub fn from_vars<I, K, V>(vars: I) -> Result<TraceConfig, TraceConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut endpoint = None;
        let mut service_name = None;
        let mut sampler = None;
        let mut sampler_arg = None;
        for (name, value) in vars {
            let value: String = value.into();
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            let slot = match name.into().as_str() {
                ENDPOINT => &mut endpoint,
                SERVICE_NAME => &mut service_name,
                SAMPLER => &mut sampler,
                SAMPLER_ARG => &mut sampler_arg,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        Ok(TraceConfig {
            endpoint: endpoint.as_deref().map(parse_endpoint).transpose()?,
            service_name: service_name
                .as_deref()
                .map(parse_service_name)
                .transpose()?,
            sampler: parse_sampler(sampler.as_deref(), sampler_arg.as_deref())?,
        })
    }

    /// Where the exporter posts spans: the endpoint with `/v1/traces`
    /// appended, as the specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn traces_url(&self) -> Option<String> {
        self.endpoint
            .as_deref()
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    }
}

impl fmt::Display for Sampler {
    /// The `OTEL_TRACES_SAMPLER` spelling, with the ratio when there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parent_based {
            f.write_str("parentbased_")?;
        }
        match self.root {
            RootSampler::AlwaysOn => f.write_str("always_on"),
            RootSampler::AlwaysOff => f.write_str("always_off"),
            RootSampler::TraceIdRatio(ratio) => write!(f, "traceidratio({ratio})"),
        }
    }
}

fn invalid(var: &'static str, reason: impl Into<String>) -> TraceConfigError {
    TraceConfigError {
        var,
        reason: reason.into(),
    }
}

/// `http://host:port[/path]`. HTTPS is refused rather than half supported:
/// the exporter's client is built without TLS (the collector is expected on
/// the same network, like nsqd and Postgres).
fn parse_endpoint(value: &str) -> Result<String, TraceConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| {
        invalid(
            ENDPOINT,
            format!("{e}; expected a URL like http://jaeger:4318"),
        )
    })?;
    match url.scheme() {
        "http" => {}
        "https" => {
            return Err(invalid(
                ENDPOINT,
                "https is not supported (the exporter speaks plain HTTP); use http://",
            ))
        }
        other => {
            return Err(invalid(
                ENDPOINT,
                format!("scheme {other:?} is not http; expected a URL like http://jaeger:4318"),
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(ENDPOINT, "the URL has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            ENDPOINT,
            "expected scheme, host, port and path only (no query, fragment or user)",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn parse_service_name(value: &str) -> Result<String, TraceConfigError> {
    if value.chars().count() > MAX_SERVICE_NAME_CHARS || value.chars().any(char::is_control) {
        return Err(invalid(
            SERVICE_NAME,
            format!("expected 1-{MAX_SERVICE_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(value.to_owned())
}

fn parse_sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, TraceConfigError> {
    let Some(name) = name else {
        return Ok(Sampler::default());
    };
    let name = name.to_ascii_lowercase();
    let (parent_based, root) = match name.strip_prefix("parentbased_") {
        Some(root) => (true, root),
        None => (false, name.as_str()),
    };
    let root = match root {
        "always_on" => RootSampler::AlwaysOn,
        "always_off" => RootSampler::AlwaysOff,
        "traceidratio" => RootSampler::TraceIdRatio(parse_ratio(arg)?),
        _ => {
            return Err(invalid(
                SAMPLER,
                format!(
                    "{name:?} is not supported; expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ),
            ))
        }
    };
    Ok(Sampler { parent_based, root })
}

/// The ratio of the `traceidratio` samplers: 1.0 when unset.
fn parse_ratio(arg: Option<&str>) -> Result<f64, TraceConfigError> {
    let Some(arg) = arg else {
        return Ok(1.0);
    };
    match arg.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(invalid(
            SAMPLER_ARG,
            "expected a number from 0 to 1 (the fraction of traces kept)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<TraceConfig, TraceConfigError> {
        TraceConfig::from_vars(vars.iter().copied())
    }

    #[test]
    fn without_an_endpoint_tracing_is_off_and_other_variables_are_ignored() {
        let config = parse(&[("DATABASE_URL", "postgres://x"), (ENDPOINT, "  ")]).unwrap();
        assert_eq!(config, TraceConfig::disabled());
        assert!(!config.is_enabled());
        assert_eq!(config.traces_url(), None);
    }

    #[test]
    fn the_traces_url_is_the_endpoint_with_the_signal_path() {
        for (endpoint, url) in [
            ("http://jaeger:4318", "http://jaeger:4318/v1/traces"),
            ("http://jaeger:4318/", "http://jaeger:4318/v1/traces"),
            (
                " http://127.0.0.1:4318/otlp ",
                "http://127.0.0.1:4318/otlp/v1/traces",
            ),
        ] {
            let config = parse(&[(ENDPOINT, endpoint)]).unwrap();
            assert!(config.is_enabled());
            assert_eq!(config.traces_url().as_deref(), Some(url), "{endpoint}");
        }
    }

    #[test]
    fn samplers_parse_as_the_specification_spells_them() {
        let sampler = |name: &str, arg: Option<&str>| {
            let mut vars = vec![(SAMPLER, name)];
            vars.extend(arg.map(|a| (SAMPLER_ARG, a)));
            parse(&vars).unwrap().sampler
        };
        assert_eq!(parse(&[]).unwrap().sampler, Sampler::default());
        assert_eq!(
            sampler("always_off", None),
            Sampler {
                parent_based: false,
                root: RootSampler::AlwaysOff
            }
        );
        assert_eq!(
            sampler("ParentBased_TraceIdRatio", Some("0.25")),
            Sampler {
                parent_based: true,
                root: RootSampler::TraceIdRatio(0.25)
            }
        );
        assert_eq!(
            sampler("traceidratio", None).root,
            RootSampler::TraceIdRatio(1.0)
        );
        assert_eq!(
            sampler("parentbased_always_off", Some("ignored")).to_string(),
            "parentbased_always_off"
        );
    }

    #[test]
    fn each_bad_value_names_its_variable_in_one_line() {
        for (var, value) in [
            (ENDPOINT, "jaeger:4318"),
            (ENDPOINT, "https://jaeger:4318"),
            (ENDPOINT, "grpc://jaeger:4317"),
            (ENDPOINT, "http://jaeger:4318/?x=1"),
            (ENDPOINT, "http://user@jaeger:4318"),
            (SERVICE_NAME, "two\nlines"),
            (SAMPLER, "jaeger_remote"),
            (SAMPLER, "sometimes"),
        ] {
            let err = parse(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{value}");
            let text = err.to_string();
            assert!(text.starts_with(&format!("invalid {var}: ")), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
        for arg in ["1.5", "-0.1", "half", "NaN"] {
            let err = parse(&[(SAMPLER, "traceidratio"), (SAMPLER_ARG, arg)]).unwrap_err();
            assert_eq!(err.var, SAMPLER_ARG, "{arg}");
        }
    }
}
