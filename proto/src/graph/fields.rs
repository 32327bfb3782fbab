//! One graph element as typed fields: a string, a pid, an extension field
//! that acts only on some link types; each refusal naming the field and
//! what was found instead.

use super::Refusal;
use crate::types::LinkType;
use serde_json::Value;

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) struct Fields<'a> {
    pub(super) index: usize,
    pub(super) name: String,
    pub(super) obj: &'a serde_json::Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub(super) fn refuse(&self, reason: impl Into<String>) -> Refusal {
        Refusal {
            index: self.index,
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    pub(super) fn opt_str(&self, key: &str) -> Result<Option<&str>, Refusal> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a string, found {}",
                json_kind(v)
            ))),
        }
    }

    pub(super) fn req_str(&self, key: &str) -> Result<&str, Refusal> {
        match self.opt_str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(self.refuse(format!("field '{key}' is empty"))),
            None => Err(self.refuse(format!("missing field '{key}'"))),
        }
    }

    pub(super) fn pid(&self, key: &str) -> Result<u32, Refusal> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => {
                n.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        self.refuse(format!(
                            "field '{key}' must be a pid (0 or a positive integer), found {n}"
                        ))
                    })
            }
            // Some producers quote numbers; accept a decimal string.
            Some(Value::String(s)) => s
                .parse::<u32>()
                .map_err(|_| self.refuse(format!("field '{key}' must be a pid, found \"{s}\""))),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a pid, found {}",
                json_kind(v)
            ))),
        }
    }

    /// Extension field `key` of a `ty` link: its value when the field acts
    /// on `ty`; None when it is absent, or does not act on `ty` and its
    /// value would change nothing there ([`changes_nothing`]); a refusal,
    /// with the reason, when it does not act on `ty` but says something.
    pub(super) fn ext(&self, key: &str, ty: LinkType) -> Result<Option<&'a Value>, Refusal> {
        let Some(v) = self.obj.get(key) else {
            return Ok(None);
        };
        let on = EXTENSIONS
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(&[][..], |(_, on)| on);
        if on.contains(&ty) {
            return Ok(Some(v));
        }
        if changes_nothing(key, v) {
            return Ok(None);
        }
        let on: Vec<&str> = on.iter().map(|t| t.as_str()).collect();
        Err(self.refuse(format!(
            "field '{key}' applies to {} links, not {ty}; here only null, false or an empty value is accepted, found {}",
            on.join(" and "),
            json_snippet(v)
        )))
    }

    /// A text extension: null, false and "" say "none" (a producer that
    /// writes every field for every link writes one of them for a field
    /// it does not use).
    pub(super) fn ext_str(&self, key: &str, ty: LinkType) -> Result<Option<&'a str>, Refusal> {
        match self.ext(key, ty)? {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.refuse(format!(
                "field '{key}' must be a string, found {}",
                json_kind(v)
            ))),
        }
    }
}

/// The extension fields (BEHAVIOUR §3) and the link types they act on. On any
/// other type a field is accepted only when it would change nothing there.
const EXTENSIONS: &[(&str, &[LinkType])] = &[
    ("strip_prefix", &[LinkType::Http]),
    ("host", &[LinkType::Http]),
    ("sni", &[LinkType::Tcp]),
    ("proxy_protocol", &[LinkType::Tcp]),
    ("balance", &[LinkType::Tcp, LinkType::Http]),
];

/// Whether extension `key` holding `v` on a link type it does not act on
/// changes nothing: null, false and empty values (a producer that writes
/// every field for every link writes those). `strip_prefix` also with
/// `true`: it strips an http path prefix, and tcp, unix and rest links
/// have none (`true` is moreover its default, the value such a producer
/// writes). A non-empty `host`, `sni` or `proxy_protocol` asks for
/// routing or a header the link's worker would not do: refused, so the
/// author learns it instead of believing it applied.
fn changes_nothing(key: &str, v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Bool(true) => key == "strip_prefix",
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) => false,
    }
}

/// A value as JSON, cut short for a message.
fn json_snippet(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}
