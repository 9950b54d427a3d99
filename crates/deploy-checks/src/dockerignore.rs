//! Which paths a `.dockerignore` keeps out of the build context, by Docker's
//! rules: patterns are relative to the context root, `*` and `?` match
//! within one path segment, `**` matches any number of segments, a pattern
//! that matches a folder drops everything in it, `!` brings a path back, and
//! the last matching pattern wins.

#[derive(Debug, Clone)]
pub struct DockerIgnore {
    /// (negated, segments) in file order.
    patterns: Vec<(bool, Vec<String>)>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| {
                let (negated, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let segments = pattern
                    .trim_start_matches('/')
                    .trim_end_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty() && *s != ".")
                    .map(str::to_owned)
                    .collect();
                (negated, segments)
            })
            .collect();
        DockerIgnore { patterns }
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left
    /// out of the build context.
    pub fn excludes(&self, path: &str) -> bool {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut excluded = false;
        for (negated, pattern) in &self.patterns {
            // A pattern that matches a parent folder matches the path too.
            let matches = (1..=segments.len()).any(|n| matches_segments(pattern, &segments[..n]));
            if matches {
                excluded = !negated;
            }
        }
        excluded
    }
}

fn matches_segments(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=path.len()).any(|skip| matches_segments(rest, &path[skip..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((segment, path_rest)) => {
                matches_glob(first.as_bytes(), segment.as_bytes())
                    && matches_segments(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one segment.
fn matches_glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| matches_glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && matches_glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && matches_glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_drop_folders_with_their_contents_and_the_last_match_wins() {
        let ignore = DockerIgnore::parse(
            "# comment\n/target\ntarget-*\n.env*\n!.env.example\n**/*.swp\nbench/tmp/\n",
        );
        for dropped in [
            "target",
            "target/release/app",
            "target-api/x",
            ".env",
            ".env.local",
            "crates/a/b.swp",
            "bench/tmp/x",
        ] {
            assert!(ignore.excludes(dropped), "{dropped}");
        }
        for kept in [
            ".env.example",
            "crates/a/src/lib.rs",
            "targets",
            "bench/run.sh",
            "Cargo.lock",
        ] {
            assert!(!ignore.excludes(kept), "{kept}");
        }
    }
}
