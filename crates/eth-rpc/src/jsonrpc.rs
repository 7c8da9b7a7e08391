//! JSON-RPC 2.0 envelopes: reading a request body (one call or a batch)
//! and writing answers, with the specification's error codes.

use serde_json::{Map, Value, json};

/// The body was not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON was not a request object (or a batch was empty or too long).
pub const INVALID_REQUEST: i64 = -32600;
/// No such method here (and no upstream to forward it to).
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The method's parameters are wrong: count, type or format.
pub const INVALID_PARAMS: i64 = -32602;
/// The endpoint failed to answer: a private lookup or the upstream failed.
pub const INTERNAL_ERROR: i64 = -32603;
/// The state asked for is not the one the tables hold (another block).
pub const STATE_UNAVAILABLE: i64 = -32000;

/// Most calls one batch may hold.
pub const MAX_BATCH: usize = 1024;

/// A call: its id (absent for a notification, which gets no answer), its
/// method and its parameters (an array or an object; `Null` if absent).
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `None` for a notification.
    pub id: Option<Value>,
    /// The method name.
    pub method: String,
    /// The parameters as sent.
    pub params: Value,
    /// The call as sent, for forwarding it unchanged.
    pub raw: Value,
}

/// An error answer's code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcError {
    /// One of the codes above.
    pub code: i64,
    /// What was wrong, for people; never a key or a value looked up.
    pub message: String,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into() }
    }

    /// -32602 with `message`.
    pub fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }
}

/// What a body holds.
#[derive(Debug)]
pub enum Body {
    /// One call, or one invalid request answered with an error.
    Single(Result<Call, RpcError>),
    /// A batch: each call, or the error its element is answered with.
    Batch(Vec<Result<Call, RpcError>>),
    /// Not a request at all: answered with this error alone.
    Invalid(RpcError),
}

/// Reads a request body.
pub fn parse(body: &[u8]) -> Body {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => return Body::Invalid(RpcError::new(PARSE_ERROR, format!("parse error: {error}"))),
    };
    match value {
        Value::Array(elements) if elements.is_empty() => {
            Body::Invalid(RpcError::new(INVALID_REQUEST, "invalid request: an empty batch"))
        }
        Value::Array(elements) if elements.len() > MAX_BATCH => Body::Invalid(RpcError::new(
            INVALID_REQUEST,
            format!("invalid request: a batch holds at most {MAX_BATCH} calls, not {}", elements.len()),
        )),
        Value::Array(elements) => Body::Batch(elements.into_iter().map(call).collect()),
        other => Body::Single(call(other)),
    }
}

/// One element of a body as a call.
fn call(value: Value) -> Result<Call, RpcError> {
    let invalid = |why: &str| RpcError::new(INVALID_REQUEST, format!("invalid request: {why}"));
    let Value::Object(object) = &value else {
        return Err(invalid("a call is a JSON object"));
    };
    if object.get("jsonrpc") != Some(&Value::String("2.0".to_string())) {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match object.get("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id.clone()),
        Some(_) => return Err(invalid("\"id\" is a string, a number or null")),
    };
    let Some(Value::String(method)) = object.get("method") else {
        return Err(invalid("\"method\" must be a string"));
    };
    let params = match object.get("params") {
        None => Value::Null,
        Some(params @ (Value::Array(_) | Value::Object(_))) => params.clone(),
        Some(_) => return Err(invalid("\"params\" is an array or an object")),
    };
    Ok(Call { id, method: method.clone(), params, raw: value.clone() })
}

/// A success answer.
pub fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// An error answer.
pub fn error(id: Value, error: &RpcError) -> Value {
    let mut body = Map::new();
    body.insert("code".to_string(), json!(error.code));
    body.insert("message".to_string(), json!(error.message));
    json!({ "jsonrpc": "2.0", "id": id, "error": body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(body: &str) -> Result<Call, RpcError> {
        match parse(body.as_bytes()) {
            Body::Single(call) => call,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn calls_are_read_with_their_id_method_and_params() {
        let call = single(r#"{"jsonrpc":"2.0","id":7,"method":"eth_chainId","params":[]}"#).unwrap();
        assert_eq!((call.id, call.method.as_str(), call.params), (Some(json!(7)), "eth_chainId", json!([])));
        let call = single(r#"{"jsonrpc":"2.0","method":"eth_chainId"}"#).unwrap();
        assert_eq!((call.id, call.params), (None, Value::Null));
    }

    #[test]
    fn malformed_bodies_get_the_specifications_codes() {
        for body in ["", "{", "[1,", "nul"] {
            assert!(
                matches!(parse(body.as_bytes()), Body::Invalid(RpcError { code: PARSE_ERROR, .. })),
                "{body}"
            );
        }
        assert!(matches!(parse(b"[]"), Body::Invalid(RpcError { code: INVALID_REQUEST, .. })));
        let too_many = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        assert!(matches!(parse(too_many.as_bytes()), Body::Invalid(RpcError { code: INVALID_REQUEST, .. })));
        for body in [
            "1",
            r#""eth_chainId""#,
            r#"{"id":1,"method":"eth_chainId"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":[1],"method":"eth_chainId"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":"0x1"}"#,
        ] {
            assert_eq!(single(body).unwrap_err().code, INVALID_REQUEST, "{body}");
        }
        let Body::Batch(calls) = parse(br#"[1, {"jsonrpc":"2.0","id":2,"method":"m"}]"#) else {
            panic!("a batch");
        };
        assert_eq!(calls[0].as_ref().unwrap_err().code, INVALID_REQUEST);
        assert_eq!(calls[1].as_ref().unwrap().method, "m");
    }

    #[test]
    fn answers_have_the_envelope() {
        assert_eq!(result(json!(1), json!("0x1")), json!({"jsonrpc": "2.0", "id": 1, "result": "0x1"}));
        let answer = error(Value::Null, &RpcError::new(METHOD_NOT_FOUND, "no"));
        assert_eq!(answer, json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32601, "message": "no"}}));
    }
}
