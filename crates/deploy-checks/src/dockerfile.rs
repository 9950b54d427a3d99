//! A Dockerfile split into stages and instructions, enough to check what the
//! final image runs, exposes and reports as its health. hadolint checks the
//! rest; this reader only has to agree with Docker on the plain syntax these
//! files use (line continuations, comments, exec-form JSON arrays) and
//! refuses what it does not read (a custom escape character, heredocs).

use std::collections::BTreeMap;

use crate::compose::HealthTest;

/// One instruction, its continuation lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// Upper case: `FROM`, `RUN`, ...
    pub keyword: String,
    /// Everything after the keyword, trimmed.
    pub args: String,
}

impl Instruction {
    /// The arguments in exec form (`["a", "b"]`), if they are written so.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        exec_form(&self.args)
    }
}

/// The instructions from one `FROM` to the next.
#[derive(Debug, Clone)]
pub struct Stage {
    /// The image after `FROM`.
    pub base: String,
    /// The name after `AS`, if any.
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

/// A `HEALTHCHECK` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    /// `--interval=10s` and the like, without the dashes.
    pub options: BTreeMap<String, String>,
    pub test: HealthTest,
}

#[derive(Debug, Clone)]
pub struct Dockerfile {
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Result<Dockerfile, String> {
        let mut stages: Vec<Stage> = Vec::new();
        for instruction in instructions(text)? {
            if instruction.keyword == "FROM" {
                let words: Vec<&str> = instruction
                    .args
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (base, name) = match words.as_slice() {
                    [base] => (*base, None),
                    [base, as_, name] if as_.eq_ignore_ascii_case("as") => (*base, Some(*name)),
                    _ => {
                        return Err(format!(
                            "line {}: expected FROM image [AS name]",
                            instruction.line
                        ))
                    }
                };
                stages.push(Stage {
                    base: base.to_owned(),
                    name: name.map(str::to_owned),
                    instructions: Vec::new(),
                });
            } else {
                let stage = stages.last_mut().ok_or_else(|| {
                    format!(
                        "line {}: {} before the first FROM",
                        instruction.line, instruction.keyword
                    )
                })?;
                stage.instructions.push(instruction);
            }
        }
        if stages.is_empty() {
            return Err("no FROM instruction".into());
        }
        Ok(Dockerfile { stages })
    }

    /// The stage the image is made of.
    pub fn final_stage(&self) -> &Stage {
        // `parse` refuses a file without a stage.
        &self.stages[self.stages.len() - 1]
    }
}

impl Stage {
    pub fn all(&self, keyword: &str) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .collect()
    }

    /// The instruction that takes effect when a keyword may be given more
    /// than once (`USER`, `ENTRYPOINT`, `HEALTHCHECK`, ...): the last one.
    pub fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).pop()
    }

    /// The variables `ENV` sets in this stage, `NAME=value` pairs (values
    /// may be double-quoted) or the legacy `ENV NAME value`.
    pub fn env(&self) -> Result<BTreeMap<String, String>, String> {
        let mut vars = BTreeMap::new();
        for env in self.all("ENV") {
            let fail = |why: &str| format!("line {}: ENV {}: {why}", env.line, env.args);
            if !env.args.contains('=') {
                let (name, value) = env
                    .args
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| fail("no value"))?;
                vars.insert(name.to_owned(), value.trim().to_owned());
                continue;
            }
            for pair in split_words(&env.args).map_err(|e| fail(&e))? {
                let (name, value) = pair
                    .split_once('=')
                    .ok_or_else(|| fail("expected NAME=value"))?;
                vars.insert(name.to_owned(), value.to_owned());
            }
        }
        Ok(vars)
    }

    /// The ports of every `EXPOSE`.
    pub fn expose(&self) -> Result<Vec<u16>, String> {
        let mut ports = Vec::new();
        for expose in self.all("EXPOSE") {
            for word in expose.args.split_whitespace() {
                let port = word.strip_suffix("/tcp").unwrap_or(word);
                ports.push(port.parse::<u16>().map_err(|_| {
                    format!(
                        "line {}: EXPOSE {word} is not a single TCP port",
                        expose.line
                    )
                })?);
            }
        }
        Ok(ports)
    }

    pub fn healthcheck(&self) -> Result<Option<Healthcheck>, String> {
        let Some(check) = self.last("HEALTHCHECK") else {
            return Ok(None);
        };
        let fail = |why: &str| format!("line {}: HEALTHCHECK: {why}", check.line);
        let mut options = BTreeMap::new();
        let mut rest = check.args.as_str();
        while let Some(option) = rest.strip_prefix("--") {
            let (word, tail) = option
                .split_once(char::is_whitespace)
                .unwrap_or((option, ""));
            let (name, value) = word
                .split_once('=')
                .ok_or_else(|| fail("expected --name=value"))?;
            options.insert(name.to_owned(), value.to_owned());
            rest = tail.trim_start();
        }
        let test = if rest == "NONE" {
            HealthTest::Disabled
        } else {
            let command = rest
                .strip_prefix("CMD")
                .ok_or_else(|| fail("expected CMD or NONE"))?
                .trim();
            match exec_form(command) {
                Some(words) if !words.is_empty() => HealthTest::Exec(words),
                Some(_) => return Err(fail("an empty command")),
                None => HealthTest::Shell(command.to_owned()),
            }
        };
        Ok(Some(Healthcheck { options, test }))
    }
}

/// Splits a Dockerfile into instructions: joins continuation lines, drops
/// comments and blank lines.
fn instructions(text: &str) -> Result<Vec<Instruction>, String> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut in_preamble = true;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if in_preamble {
            if let Some(directive) = trimmed.strip_prefix('#') {
                if let Some((name, _)) = directive.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("escape") {
                        return Err(format!(
                            "line {line}: a custom escape character is not read here"
                        ));
                    }
                }
                continue;
            }
            in_preamble = false;
        }
        // Docker drops comment lines, also in the middle of a continued instruction.
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_none()) {
            continue;
        }
        let (continued, content) = match trimmed.strip_suffix('\\') {
            Some(content) => (true, content),
            None => (false, trimmed),
        };
        let (start, mut joined) = pending.take().unwrap_or((line, String::new()));
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(content.trim());
        if continued {
            pending = Some((start, joined));
            continue;
        }
        let joined = joined.trim();
        if joined.is_empty() {
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((joined, ""));
        if args.contains("<<") && matches!(keyword.to_ascii_uppercase().as_str(), "RUN" | "COPY") {
            return Err(format!("line {start}: heredocs are not read here"));
        }
        out.push(Instruction {
            line: start,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    if let Some((start, _)) = pending {
        return Err(format!(
            "line {start}: the last instruction ends with a continuation"
        ));
    }
    Ok(out)
}

fn exec_form(args: &str) -> Option<Vec<String>> {
    if !args.starts_with('[') {
        return None;
    }
    serde_json::from_str(args).ok()
}

/// Whitespace-separated words where a double-quoted part may hold spaces.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '\\' | '\'' | '$' => {
                return Err(format!("{c} is not read here; write the value plainly"))
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if quoted {
        return Err("an unclosed quote".into());
    }
    if !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# syntax=docker/dockerfile:1
# A comment after the directives.
FROM rust:1.89-bookworm AS build
ENV SQLX_OFFLINE=true \
    # a comment inside a continuation
    CARGO_TERM_COLOR=never
RUN cargo build --release \
    --locked

FROM debian:bookworm-slim
ENV A="two words" B=1
ENV LEGACY value with spaces
EXPOSE 8080 9090/tcp
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s CMD ["/usr/local/bin/app", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/app"]
"#;

    #[test]
    fn stages_instructions_and_continuations_are_read_as_docker_reads_them() {
        let file = Dockerfile::parse(SAMPLE).unwrap();
        assert_eq!(file.stages.len(), 2);
        let build = &file.stages[0];
        assert_eq!(
            (build.base.as_str(), build.name.as_deref()),
            ("rust:1.89-bookworm", Some("build"))
        );
        let env = build.env().unwrap();
        assert_eq!(
            (
                env["SQLX_OFFLINE"].as_str(),
                env["CARGO_TERM_COLOR"].as_str()
            ),
            ("true", "never")
        );
        let run = build.last("RUN").unwrap();
        assert_eq!(
            (run.line, run.args.as_str()),
            (7, "cargo build --release --locked")
        );

        let last = file.final_stage();
        let env = last.env().unwrap();
        assert_eq!(
            (env["A"].as_str(), env["LEGACY"].as_str()),
            ("two words", "value with spaces")
        );
        assert_eq!(last.expose().unwrap(), [8080, 9090]);
        assert_eq!(last.last("USER").unwrap().args, "10001:10001");
        let check = last.healthcheck().unwrap().unwrap();
        assert_eq!(check.options["interval"], "10s");
        assert_eq!(
            check.test,
            HealthTest::Exec(vec!["/usr/local/bin/app".into(), "healthcheck".into()])
        );
        assert_eq!(
            last.last("ENTRYPOINT").unwrap().exec_form().unwrap(),
            ["/usr/local/bin/app"]
        );
    }

    #[test]
    fn syntax_this_reader_does_not_follow_is_refused() {
        for bad in [
            "# escape=`\nFROM x\n",
            "RUN true\nFROM x\n",
            "FROM x\nRUN <<EOF\ntrue\nEOF\n",
            "FROM x\nRUN a \\\n",
            "",
        ] {
            assert!(Dockerfile::parse(bad).is_err(), "{bad:?}");
        }
    }
}
