//! Parsing Canonical Form and the CRC-64-AVRO (Rabin) fingerprint of a
//! schema, as the Avro specification defines them.
//!
//! `apache-avro` 0.20's own `Schema::canonical_form` keeps a logical type's
//! base type as `{"type":"long"}` where the specification (and the Java,
//! Python and other implementations) reduce it to `"long"`, so its
//! fingerprint of any schema with a logical type differs from every other
//! language's. Single-object encoding must interoperate, so the form is
//! computed here from the specification's rules.

use std::collections::HashSet;

use apache_avro::Schema;
use serde_json::{Map, Value};

use crate::Error;

const EMPTY: u64 = 0xc15d_213a_a4d7_a795;

const TABLE: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let mut fp = i as u64;
        let mut bit = 0;
        while bit < 8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            bit += 1;
        }
        table[i] = fp;
        i += 1;
    }
    table
};

/// The CRC-64-AVRO fingerprint of `bytes`.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    bytes.iter().fold(EMPTY, |fp, &b| {
        (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize]
    })
}

/// The fingerprint that single-object encoding writes (little-endian) after
/// its magic: CRC-64-AVRO of the schema's Parsing Canonical Form.
pub fn fingerprint(schema: &Schema) -> Result<u64, Error> {
    Ok(crc64_avro(canonical_form(schema)?.as_bytes()))
}

/// The schema's Parsing Canonical Form, per the Avro specification.
pub fn canonical_form(schema: &Schema) -> Result<String, Error> {
    let json = serde_json::to_value(schema).map_err(|e| Error::BadSchema {
        detail: e.to_string(),
    })?;
    canonical_form_json(&json)
}

/// The Parsing Canonical Form of a schema given as JSON.
pub fn canonical_form_json(json: &Value) -> Result<String, Error> {
    let mut out = String::new();
    Pcf {
        seen: HashSet::new(),
    }
    .write(json, "", &mut out)?;
    Ok(out)
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

struct Pcf {
    /// Full names of the named types already written: later uses are names.
    seen: HashSet<String>,
}

fn bad(detail: impl Into<String>) -> Error {
    Error::BadSchema {
        detail: detail.into(),
    }
}

fn quote(s: &str, out: &mut String) {
    // serde_json escapes only what JSON requires, like the [STRINGS] rule.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// The full name of `name` ([FULLNAMES]), given an explicit namespace and
/// the enclosing one.
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_owned();
    }
    match namespace
        .filter(|ns| !ns.is_empty())
        .or(Some(enclosing).filter(|ns| !ns.is_empty()))
    {
        Some(ns) => format!("{ns}.{name}"),
        None => name.to_owned(),
    }
}

fn namespace_of(full: &str) -> &str {
    full.rfind('.').map_or("", |dot| &full[..dot])
}

impl Pcf {
    fn write(&mut self, json: &Value, enclosing: &str, out: &mut String) -> Result<(), Error> {
        match json {
            Value::String(name) if PRIMITIVES.contains(&name.as_str()) => quote(name, out),
            Value::String(name) => quote(&full_name(name, None, enclosing), out),
            Value::Array(branches) => {
                out.push('[');
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write(branch, enclosing, out)?;
                }
                out.push(']');
            }
            Value::Object(map) => self.write_object(map, enclosing, out)?,
            other => return Err(bad(format!("not a schema: {other}"))),
        }
        Ok(())
    }

    fn write_object(
        &mut self,
        map: &Map<String, Value>,
        enclosing: &str,
        out: &mut String,
    ) -> Result<(), Error> {
        let ty = match map.get("type") {
            Some(Value::String(ty)) => ty.as_str(),
            // `{"type": {...}}` or `{"type": [...]}`: the inner schema.
            Some(inner @ (Value::Object(_) | Value::Array(_))) => {
                return self.write(inner, enclosing, out)
            }
            _ => return Err(bad("a schema object without a type")),
        };
        match ty {
            // [PRIMITIVES] after [STRIP]: logicalType and the rest go.
            _ if PRIMITIVES.contains(&ty) => quote(ty, out),
            "record" | "error" | "enum" | "fixed" => {
                let name = map
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("a named type without a name"))?;
                let namespace = map.get("namespace").and_then(Value::as_str);
                let full = full_name(name, namespace, enclosing);
                if !self.seen.insert(full.clone()) {
                    quote(&full, out);
                    return Ok(());
                }
                out.push_str("{\"name\":");
                quote(&full, out);
                out.push_str(",\"type\":");
                quote(ty, out);
                match ty {
                    "enum" => {
                        let symbols = map
                            .get("symbols")
                            .and_then(Value::as_array)
                            .ok_or_else(|| bad("an enum without symbols"))?;
                        out.push_str(",\"symbols\":[");
                        for (i, symbol) in symbols.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            quote(
                                symbol
                                    .as_str()
                                    .ok_or_else(|| bad("an enum symbol that is not a string"))?,
                                out,
                            );
                        }
                        out.push(']');
                    }
                    "fixed" => {
                        let size = match map.get("size") {
                            Some(Value::Number(n)) => n.as_u64(),
                            Some(Value::String(s)) => s.parse().ok(),
                            _ => None,
                        };
                        let size = size.ok_or_else(|| bad("a fixed without a size"))?;
                        out.push_str(&format!(",\"size\":{size}"));
                    }
                    _ => {
                        let fields = map
                            .get("fields")
                            .and_then(Value::as_array)
                            .ok_or_else(|| bad("a record without fields"))?;
                        let inner = namespace_of(&full).to_owned();
                        out.push_str(",\"fields\":[");
                        for (i, field) in fields.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            let name = field
                                .get("name")
                                .and_then(Value::as_str)
                                .ok_or_else(|| bad("a field without a name"))?;
                            let ty = field
                                .get("type")
                                .ok_or_else(|| bad("a field without a type"))?;
                            out.push_str("{\"name\":");
                            quote(name, out);
                            out.push_str(",\"type\":");
                            self.write(ty, &inner, out)?;
                            out.push('}');
                        }
                        out.push(']');
                    }
                }
                out.push('}');
            }
            "array" => {
                let items = map
                    .get("items")
                    .ok_or_else(|| bad("an array without items"))?;
                out.push_str("{\"type\":\"array\",\"items\":");
                self.write(items, enclosing, out)?;
                out.push('}');
            }
            "map" => {
                let values = map
                    .get("values")
                    .ok_or_else(|| bad("a map without values"))?;
                out.push_str("{\"type\":\"map\",\"values\":");
                self.write(values, enclosing, out)?;
                out.push('}');
            }
            // A reference to a named type written as `{"type": "Name"}`.
            name => quote(&full_name(name, None, enclosing), out),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::rabin::Rabin;

    use super::*;
    use crate::{event_v1, event_v2};

    #[test]
    fn crc64_matches_the_spec_and_apache_avro() {
        // The Avro specification's test vector for the schema "null".
        assert_eq!(crc64_avro(b"\"null\"") as i64, 7_195_948_357_588_979_594);
        for text in [
            r#""int""#,
            r#""string""#,
            r#"{"type":"array","items":"long"}"#,
        ] {
            let schema = Schema::parse_str(text).unwrap();
            let theirs =
                u64::from_le_bytes(schema.fingerprint::<Rabin>().bytes.try_into().unwrap());
            assert_eq!(fingerprint(&schema).unwrap(), theirs, "{text}");
        }
    }

    #[test]
    fn logical_types_reduce_to_their_base_type() {
        let schema =
            Schema::parse_str(r#"{"type":"long","logicalType":"timestamp-millis"}"#).unwrap();
        assert_eq!(canonical_form(&schema).unwrap(), r#""long""#);
        let decimal = r#"{"type":"bytes","logicalType":"decimal","precision":9,"scale":4}"#;
        assert_eq!(
            canonical_form(&Schema::parse_str(decimal).unwrap()).unwrap(),
            r#""bytes""#
        );
    }

    #[test]
    fn named_types_use_full_names_and_are_written_once() {
        let text = r#"{"type":"record","name":"R","namespace":"a.b","doc":"x","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]},"default":"X"},
            {"name":"f","type":{"type":"fixed","name":"F","namespace":"c","size":4}},
            {"name":"g","type":"E"},
            {"name":"m","type":{"type":"map","values":{"type":"array","items":"c.F"}}}]}"#;
        let pcf = canonical_form(&Schema::parse_str(text).unwrap()).unwrap();
        assert_eq!(
            pcf,
            r#"{"name":"a.b.R","type":"record","fields":[{"name":"e","type":{"name":"a.b.E","type":"enum","symbols":["X","Y"]}},{"name":"f","type":{"name":"c.F","type":"fixed","size":4}},{"name":"g","type":"a.b.E"},{"name":"m","type":{"type":"map","values":{"type":"array","items":"c.F"}}}]}"#
        );
    }

    /// Expected values computed with fastavro 1.13.1
    /// (`fastavro.schema.to_parsing_canonical_form` and `fingerprint(...,
    /// "CRC-64-AVRO")`, hex of the little-endian bytes).
    #[test]
    fn event_schemas_match_fastavro() {
        let v1 = canonical_form(event_v1()).unwrap();
        assert!(v1.starts_with(r#"{"name":"wafunnel.Event","type":"record","fields":[{"name":"event_id","type":"string"},{"name":"type","type":"string"},{"name":"account_id","type":"string"},{"name":"event_time","type":"long"},"#), "{v1}");
        let hex = |fp: u64| {
            fp.to_le_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(hex(fingerprint(event_v1()).unwrap()), "080ab7767ea26f19");
        assert_eq!(hex(fingerprint(event_v2()).unwrap()), "8f16a7fe0924497f");
    }
}
