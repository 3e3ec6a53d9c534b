//! The responses the runtime sends when a function fails instead of
//! answering: what status, and a message a developer can act on.

use std::time::Duration;

use http::{Response, StatusCode, header};

use super::request_body::BodyLimit;
use crate::body::{self, Body};

/// Seconds a client should wait before retrying when every instance slot
/// is busy.
const RETRY_AFTER_SECONDS: u32 = 1;

/// Why a request did not get the guest's own response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The guest trapped (panic, `unreachable`, a host error).
    Trap { reason: String },
    /// The guest tried to grow its memory past its limit.
    MemoryLimit { memory_bytes: u64 },
    /// The guest ran past its wall-clock timeout.
    Timeout { timeout: Duration },
    /// The guest used up its fuel (`limits.fuel`).
    FuelLimit { fuel: u64 },
    /// The request body is larger than the function accepts; `size_bytes`
    /// when its `Content-Length` said so (else it broke off while streaming).
    BodyTooLarge {
        limit: BodyLimit,
        size_bytes: Option<u64>,
    },
    /// Every instance slot of the pool is in use.
    PoolExhausted { reason: String },
    /// The node's memory budget for functions is in use by other requests.
    MemoryBudget { budget_bytes: u64 },
    /// The guest returned without ever setting a response.
    NoResponse,
    /// The guest set an error instead of a response.
    GuestError { code: String },
    /// The request could not be handed to the guest.
    BadRequest { reason: String },
}

impl Failure {
    /// The status code this failure answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Failure::PoolExhausted { .. } | Failure::MemoryBudget { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Failure::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Failure::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::Trap { .. }
            | Failure::MemoryLimit { .. }
            | Failure::FuelLimit { .. }
            | Failure::NoResponse
            | Failure::GuestError { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one-line message for function `name`.
    pub fn message(&self, name: &str) -> String {
        match self {
            Failure::Trap { reason } => format!("function `{name}` failed: {reason}"),
            Failure::MemoryLimit { memory_bytes } => format!(
                "function `{name}` failed: it exceeded its memory limit of {}",
                format_bytes(*memory_bytes)
            ),
            Failure::Timeout { timeout } => format!(
                "function `{name}` exceeded its {} timeout",
                format_duration(*timeout)
            ),
            Failure::FuelLimit { fuel } => format!(
                "function `{name}` failed: it used all its fuel (functions.{name}.limits.fuel = {fuel})"
            ),
            Failure::BodyTooLarge { limit, size_bytes } => {
                let this_one = match size_bytes {
                    Some(size) => format!("this one is {}", format_bytes(*size)),
                    None => "this one is larger".to_string(),
                };
                format!(
                    "function `{name}` accepts request bodies up to {} ({}); {this_one}",
                    format_bytes(limit.bytes),
                    limit.setting(name)
                )
            }
            Failure::PoolExhausted { reason } => format!(
                "function `{name}` cannot run now: every instance slot is busy ({reason}); retry shortly"
            ),
            Failure::MemoryBudget { budget_bytes } => format!(
                "function `{name}` cannot run now: the node's memory for functions is in use \
                 (limits.wasm.memory_budget = {}); retry shortly",
                format_bytes(*budget_bytes)
            ),
            Failure::NoResponse => {
                format!("function `{name}` failed: it returned without sending a response")
            }
            Failure::GuestError { code } => {
                format!("function `{name}` failed: it answered with error {code}")
            }
            Failure::BadRequest { reason } => {
                format!("function `{name}` cannot take this request: {reason}")
            }
        }
    }

    /// The complete HTTP response for function `name`.
    pub fn response(&self, name: &str) -> Response<Body> {
        let mut response = Response::new(body::full(format!("{}\n", self.message(name))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self,
            Failure::PoolExhausted { .. } | Failure::MemoryBudget { .. }
        ) {
            headers.insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
        }
        response
    }
}

/// `2s`, `1500ms`: whole seconds when exact.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis > 0 && millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// `64 MiB`, `1 GiB`, `1000 bytes`: the largest exact binary unit.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let timeout = Failure::Timeout {
            timeout: Duration::from_secs(2),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            timeout.message("api"),
            "function `api` exceeded its 2s timeout"
        );
        assert_eq!(
            Failure::MemoryLimit {
                memory_bytes: 64 << 20
            }
            .message("api"),
            "function `api` failed: it exceeded its memory limit of 64 MiB"
        );
        assert_eq!(
            Failure::Trap {
                reason: "wasm `unreachable` instruction executed".into()
            }
            .message("f"),
            "function `f` failed: wasm `unreachable` instruction executed"
        );
    }

    #[test]
    fn fuel_and_body_messages_name_their_setting() {
        use super::super::request_body::BodyLimitSource;
        let fuel = Failure::FuelLimit { fuel: 1_000_000 };
        assert_eq!(fuel.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            fuel.message("api"),
            "function `api` failed: it used all its fuel (functions.api.limits.fuel = 1000000)"
        );
        let declared = Failure::BodyTooLarge {
            limit: BodyLimit {
                bytes: 1 << 20,
                set_by: BodyLimitSource::Function,
            },
            size_bytes: Some(5 << 20),
        };
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            declared.message("api"),
            "function `api` accepts request bodies up to 1 MiB (functions.api.limits.body); this one is 5 MiB"
        );
        let streamed = Failure::BodyTooLarge {
            limit: BodyLimit {
                bytes: 32 << 20,
                set_by: BodyLimitSource::NodeDefault,
            },
            size_bytes: None,
        };
        assert_eq!(
            streamed.message("api"),
            "function `api` accepts request bodies up to 32 MiB (limits.wasm.request_body, \
             the node's default; functions.api.limits.body sets the function's own); this one is larger"
        );
    }

    #[test]
    fn pool_exhaustion_asks_to_retry() {
        let response = Failure::PoolExhausted {
            reason: "limit".into(),
        }
        .response("f");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn units() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_bytes(4 << 30), "4 GiB");
        assert_eq!(format_bytes(1536), "1536 bytes");
        assert_eq!(format_bytes(3 << 10), "3 KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }
}
