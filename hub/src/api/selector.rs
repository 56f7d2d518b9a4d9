//! Kubernetes label selectors for `List` and `Watch`: `env=prod`,
//! `env==prod`, `env!=dev`, `tier in (a,b)`, `tier notin (c)`, `gpu`,
//! `!deprecated`, joined by commas; every requirement must match.

use std::collections::BTreeMap;

/// Longest selector accepted.
pub const MAX_SELECTOR_LEN: usize = 4096;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value`, `key==value`, `key in (values)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (values)`: also true without the key.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector; the empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `text`; the error says what is wrong, for the caller.
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(format!("label selector longer than {MAX_SELECTOR_LEN} bytes"));
        }
        let mut out = Vec::new();
        for part in split_top_level(text)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(format!("empty requirement in label selector {text:?}"));
            }
            out.push(requirement(part)?);
        }
        Ok(Selector(out))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in label selector {text:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in label selector {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn key(k: &str, whole: &str) -> Result<String, String> {
    let k = k.trim();
    let ok = !k.is_empty()
        && k.len() <= 317
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
    if ok { Ok(k.to_owned()) } else { Err(format!("invalid label key {k:?} in {whole:?}")) }
}

fn value(v: &str, whole: &str) -> Result<String, String> {
    let v = v.trim();
    let ok = v.len() <= 63 && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(v.to_owned()) } else { Err(format!("invalid label value {v:?} in {whole:?}")) }
}

fn set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a parenthesised list of values in {whole:?}"))?;
    let values: Vec<String> = inner.split(',').map(|v| value(v, whole)).collect::<Result<_, _>>()?;
    if values.iter().any(String::is_empty) && inner.trim().is_empty() {
        return Err(format!("empty list of values in {whole:?}"));
    }
    Ok(values)
}

fn requirement(part: &str) -> Result<Requirement, String> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k, part)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotIn(key(k, part)?, vec![value(v, part)?]));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::In(key(k, part)?, vec![value(v, part)?]));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [k] => Ok(Requirement::Exists(key(k, part)?)),
        [k, rest] => {
            let rest = rest.trim_start();
            if let Some(values) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key(k, part)?, set(values, part)?))
            } else if let Some(values) = rest.strip_prefix("in") {
                Ok(Requirement::In(key(k, part)?, set(values, part)?))
            } else {
                Err(format!("expected =, !=, in or notin in label selector requirement {part:?}"))
            }
        }
        _ => Err(format!("invalid label selector requirement {part:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn selectors_match_as_in_kubernetes() {
        let prod_eu = labels(&[("env", "prod"), ("region", "eu"), ("gpu", "")]);
        let dev = labels(&[("env", "dev")]);
        let cases = [
            ("", true, true),
            ("env=prod", true, false),
            ("env==prod", true, false),
            ("env!=prod", false, true),
            ("region in (eu, us)", true, false),
            ("region notin (eu)", false, true),
            ("gpu", true, false),
            ("!gpu", false, true),
            ("env in (prod,dev),!deprecated", true, true),
            ("env=prod,region=us", false, false),
        ];
        for (text, a, b) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((s.matches(&prod_eu), s.matches(&dev)), (a, b), "{text}");
        }
    }

    #[test]
    fn bad_selectors_say_why() {
        for text in ["env=(", "a in b", "a in (b", "=x", "a,,b", "a foo (b)", "a=b c"] {
            let e = Selector::parse(text).expect_err(text);
            assert!(e.contains(text) || e.contains("selector"), "{text}: {e}");
        }
    }
}
