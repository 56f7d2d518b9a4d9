//! Query parameters, parsed the way kube-apiserver reads them.

use std::collections::HashMap;

/// The decoded query string of one request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Query {
    /// The first value of each key.
    first: HashMap<String, String>,
    /// Every pair, in order.
    all: Vec<(String, String)>,
}

impl Query {
    /// Decodes `a=b&c=d` (form-urlencoded).
    pub fn parse(raw: Option<&str>) -> Self {
        let mut first = HashMap::new();
        let mut all = Vec::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            first.entry(k.to_string()).or_insert_with(|| v.to_string());
            all.push((k.into_owned(), v.into_owned()));
        }
        Self { first, all }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.first.get(key).map(String::as_str)
    }

    /// Every value of a repeated `key` (`command=sh&command=-c`), in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.all.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// The value of `key`, treating an empty value as absent.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// A boolean parameter, parsed like Go's `strconv.ParseBool`; absent or
    /// unparsable is `false`.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "t" | "T" | "true" | "TRUE" | "True"))
    }

    /// An integer parameter; `Err` carries a kube-style message.
    pub fn int(&self, key: &str) -> Result<Option<i64>, String> {
        match self.non_empty(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| format!("invalid value for {key}: {v:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_kube() {
        let q = Query::parse(Some("watch=1&labelSelector=a%3Db%2Cc&limit=5&x="));
        assert!(q.flag("watch"));
        assert!(!q.flag("missing"));
        assert_eq!(q.get("labelSelector"), Some("a=b,c"));
        assert_eq!(q.int("limit"), Ok(Some(5)));
        assert_eq!(q.non_empty("x"), None);
        assert!(q.int("labelSelector").is_err());
        let q = Query::parse(Some("command=sh&command=-c&command=echo%20hi&stdout=1"));
        assert_eq!(q.all("command"), ["sh", "-c", "echo hi"]);
    }
}
