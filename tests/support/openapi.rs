//! Checks live answers against an OpenAPI 3 document: the operation and
//! status must be documented and the JSON body must match the schema
//! (types, required and unknown properties, nullability, `$ref`, `allOf`,
//! `oneOf`). Records which operations were exercised, so a test can show it
//! covered the whole document.
use std::{cell::RefCell, collections::BTreeSet};

use serde_json::Value;

pub struct Conformance {
    doc: Value,
    seen: RefCell<BTreeSet<(String, String)>>,
}

impl Conformance {
    pub fn new(doc: Value) -> Self {
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "not an OpenAPI 3 document"
        );
        Self {
            doc,
            seen: RefCell::default(),
        }
    }

    /// Panics with the reason if `body` (answered `status` to `method` on
    /// the path `template`, e.g. `/v1/x/{id}`) breaks the document.
    pub fn check(&self, method: &str, template: &str, status: u16, body: &Value) {
        let method = method.to_ascii_lowercase();
        let operation = &self.doc["paths"][template][&method];
        assert!(
            operation.is_object(),
            "{method} {template} is not documented"
        );
        self.seen
            .borrow_mut()
            .insert((method.clone(), template.to_owned()));
        let response = self.resolve(&operation["responses"][status.to_string()]);
        assert!(
            response.is_object(),
            "{method} {template}: status {status} is not documented"
        );
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_object() {
            if let Err(error) = self.validate(body, schema, "$") {
                panic!("{method} {template} {status}: {error}\nbody: {body}");
            }
        }
    }

    /// Documented operations never exercised.
    pub fn unexercised(&self) -> Vec<String> {
        let seen = self.seen.borrow();
        let mut missing = Vec::new();
        for (path, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item[method].is_object() && !seen.contains(&(method.into(), path.clone())) {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        missing
    }

    fn resolve<'a>(&'a self, value: &'a Value) -> &'a Value {
        match value["$ref"].as_str() {
            Some(pointer) => self.resolve(
                self.doc
                    .pointer(pointer.trim_start_matches('#'))
                    .unwrap_or(&Value::Null),
            ),
            None => value,
        }
    }

    fn validate(&self, value: &Value, schema: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(all) = schema["allOf"].as_array() {
            return all
                .iter()
                .try_for_each(|part| self.validate_open(value, part, at));
        }
        if let Some(any) = schema["oneOf"].as_array() {
            return match any.iter().any(|s| self.validate(value, s, at).is_ok()) {
                true => Ok(()),
                false => Err(format!("{at}: matches none of oneOf")),
            };
        }
        if value.is_null() && schema["nullable"] == Value::Bool(true) {
            return Ok(());
        }
        let kind = schema["type"].as_str().unwrap_or("any");
        let fits = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !fits {
            return Err(format!("{at}: expected {kind}, got {value}"));
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                self.validate(item, &schema["items"], &format!("{at}[{i}]"))?;
            }
        }
        if let Some(object) = value.as_object() {
            for required in schema["required"].as_array().into_iter().flatten() {
                let name = required.as_str().unwrap_or_default();
                if !object.contains_key(name) {
                    return Err(format!("{at}: missing required {name:?}"));
                }
            }
            let properties = &schema["properties"];
            for (name, field) in object {
                match properties.get(name) {
                    Some(property) => self.validate(field, property, &format!("{at}.{name}"))?,
                    None if schema["additionalProperties"] == Value::Bool(false) => {
                        return Err(format!("{at}: undocumented property {name:?}"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// An `allOf` part: its own properties are checked, others allowed.
    fn validate_open(&self, value: &Value, part: &Value, at: &str) -> Result<(), String> {
        let part = self.resolve(part);
        let mut open = part.clone();
        if let Some(object) = open.as_object_mut() {
            object.remove("additionalProperties");
        }
        self.validate(value, &open, at)
    }
}
