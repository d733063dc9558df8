//! Command routes: a method and a path pattern with `{param}` segments.

use std::fmt;

use http::Method;

/// A method and path pattern that marks requests as commands.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CommandRoute {
    method: Method,
    pattern: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

impl CommandRoute {
    /// Parses `pattern`, such as `/orders/{id}/cancel`.
    ///
    /// # Panics
    ///
    /// Panics if the pattern does not start with `/`, or has a segment that
    /// opens `{` without closing it or puts `{` or `}` inside a literal.
    pub(crate) fn new(method: Method, pattern: &str) -> Self {
        assert!(
            pattern.starts_with('/'),
            "invalid command route {pattern:?}: a pattern starts with '/'"
        );
        let segments = pattern[1..]
            .split('/')
            .map(|segment| parse_segment(pattern, segment))
            .collect();

        Self {
            method,
            pattern: pattern.to_owned(),
            segments,
        }
    }

    /// Returns the pattern as configured.
    pub(crate) fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Returns `true` if the request with `method` and `path` (without the
    /// query) is this command. A parameter matches one non-empty segment.
    pub(crate) fn matches(&self, method: &Method, path: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };

        let mut parts = path.split('/');
        let all_match = self
            .segments
            .iter()
            .all(|segment| match (segment, parts.next()) {
                (Segment::Literal(literal), Some(part)) => literal == part,
                (Segment::Param, Some(part)) => !part.is_empty(),
                (_, None) => false,
            });
        all_match && parts.next().is_none()
    }
}

fn parse_segment(pattern: &str, segment: &str) -> Segment {
    let is_param = segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
    let inner = if is_param {
        &segment[1..segment.len() - 1]
    } else {
        segment
    };
    assert!(
        !inner.contains(['{', '}']),
        "invalid command route {pattern:?}: a parameter is a whole segment such as {{id}}"
    );

    if is_param {
        Segment::Param
    } else {
        Segment::Literal(segment.to_owned())
    }
}

impl fmt::Debug for CommandRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_route_matches_exactly() {
        let route = CommandRoute::new(Method::POST, "/orders");

        assert!(route.matches(&Method::POST, "/orders"));
        assert!(!route.matches(&Method::GET, "/orders"));
        assert!(!route.matches(&Method::POST, "/orders/"));
        assert!(!route.matches(&Method::POST, "/orders/1"));
        assert!(!route.matches(&Method::POST, "/order"));
    }

    #[test]
    fn parameter_matches_one_segment() {
        let route = CommandRoute::new(Method::POST, "/orders/{id}/cancel");

        assert!(route.matches(&Method::POST, "/orders/42/cancel"));
        assert!(!route.matches(&Method::POST, "/orders//cancel"));
        assert!(!route.matches(&Method::POST, "/orders/4/2/cancel"));
        assert!(!route.matches(&Method::POST, "/orders/42"));
    }

    #[test]
    fn root_route_matches_root() {
        let route = CommandRoute::new(Method::POST, "/");

        assert!(route.matches(&Method::POST, "/"));
        assert!(!route.matches(&Method::POST, "/a"));
    }

    #[test]
    #[should_panic(expected = "starts with '/'")]
    fn relative_pattern_panics() {
        CommandRoute::new(Method::POST, "orders");
    }

    #[test]
    #[should_panic(expected = "whole segment")]
    fn partial_parameter_panics() {
        CommandRoute::new(Method::POST, "/orders/x{id}");
    }
}
