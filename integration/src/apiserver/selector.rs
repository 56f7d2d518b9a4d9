//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`,
//! `a>1`) and field selectors (`metadata.name=x`, `==`, `!=`).

use std::collections::BTreeMap;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
    Gt(i64),
    Lt(i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<(String, Op)>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    !name.is_empty()
        && name.len() <= 63
        && key.split('/').count() <= 2
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Whether `v` is a valid label value (also used by object validation).
pub(crate) fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Whether `k` is a valid label or annotation key (a qualified name).
pub(crate) fn valid_label_key(k: &str) -> bool {
    valid_key(k)
}

fn parse_requirement(req: &str) -> Result<(String, Op), String> {
    let bad = || format!("unable to parse requirement: found '{req}', expected: valid requirement");
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if valid_label_value(v) { Ok(v.to_string()) } else { Err(bad()) }
    };
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if valid_key(k) { Ok(k.to_string()) } else { Err(bad()) }
    };
    if let Some(k) = req.strip_prefix('!') {
        return Ok((key(k)?, Op::DoesNotExist));
    }
    if let Some((head, vals)) = req.split_once('(') {
        let vals = vals.trim_end().strip_suffix(')').ok_or_else(bad)?;
        let mut words = head.split_whitespace();
        let (k, op, extra) = (words.next(), words.next(), words.next());
        let (Some(k), Some(op), None) = (k, op, extra) else { return Err(bad()) };
        let set = vals.split(',').map(value).collect::<Result<Vec<_>, _>>()?;
        return match op {
            "in" => Ok((key(k)?, Op::In(set))),
            "notin" => Ok((key(k)?, Op::NotIn(set))),
            _ => Err(bad()),
        };
    }
    for (sep, make) in [
        ("!=", Op::NotEquals as fn(String) -> Op),
        ("==", Op::Equals as fn(String) -> Op),
        ("=", Op::Equals as fn(String) -> Op),
    ] {
        if let Some((k, v)) = req.split_once(sep) {
            return Ok((key(k)?, make(value(v)?)));
        }
    }
    for (sep, gt) in [(">", true), ("<", false)] {
        if let Some((k, v)) = req.split_once(sep) {
            let n: i64 = v.trim().parse().map_err(|_| bad())?;
            return Ok((key(k)?, if gt { Op::Gt(n) } else { Op::Lt(n) }));
        }
    }
    Ok((key(req)?, Op::Exists))
}

impl LabelSelector {
    /// Parses a selector; `Err` carries a kube-style message (answered 400).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        split_top_level(s)
            .into_iter()
            .map(|r| parse_requirement(r.trim()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, op)| {
            let v = labels.get(k);
            match op {
                Op::Equals(want) => v == Some(want),
                Op::NotEquals(want) => v != Some(want),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
                Op::Lt(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
            }
        })
    }

    /// Whether the object's `metadata.labels` satisfy the selector.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.is_empty() || self.matches(&labels_of(obj))
    }
}

/// An object's labels as a map (non-string values ignored).
pub(crate) fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `a=b,c!=d`; `Err` carries a kube-style message.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for req in s.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = req.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = req.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = req.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{req}'"));
            };
            out.push((field.trim().to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(out))
    }

    /// The value `field` must equal, if the selector pins it.
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|(f, eq, _)| f == field && *eq).map(|(_, _, v)| v.as_str())
    }

    /// The fields the selector uses.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(f, _, _)| f.as_str())
    }

    /// Whether the selector holds, with `value_of` giving a field's value.
    pub fn matches(&self, value_of: impl Fn(&str) -> String) -> bool {
        self.0.iter().all(|(f, eq, v)| (value_of(f) == *v) == *eq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn label_selectors_match_like_kube() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let m = |s: &str| LabelSelector::parse(s).expect(s).matches(&l);
        assert!(m(""));
        assert!(m("app=web"));
        assert!(m("app==web,tier"));
        assert!(!m("app!=web"));
        assert!(m("missing!=x"));
        assert!(m("app in (web, api)"));
        assert!(!m("app notin (web)"));
        assert!(m("missing notin (web)"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("n>4,n<6"));
        assert!(m("app in (web),tier in (front,back)"));
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let f = FieldSelector::parse("metadata.name=x,metadata.namespace!=kube-system").expect("parse");
        assert_eq!(f.exact("metadata.name"), Some("x"));
        assert_eq!(f.exact("metadata.namespace"), None);
        assert!(f.matches(|k| if k == "metadata.name" { "x".into() } else { "default".into() }));
        assert!(!f.matches(|_| "kube-system".into()));
        assert!(FieldSelector::parse("nonsense").is_err());
    }
}
