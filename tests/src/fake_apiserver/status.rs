//! Failures as kube-apiserver reports them: a `Status` object with an HTTP
//! code, a reason and a message.

use serde_json::{json, Value};

use super::resources::ResourceDef;

/// A failed request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: json!({}),
        }
    }

    fn about(mut self, def: &ResourceDef, name: Option<&str>) -> ApiError {
        self.details = json!({ "group": def.group, "kind": def.plural });
        if let Some(n) = name {
            self.details["name"] = json!(n);
        }
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// A path, group or resource the server does not serve.
    pub fn no_such_resource() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", def.qualified())).about(def, Some(name))
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified()),
        )
        .about(def, Some(name))
    }

    pub fn conflict(def: &ResourceDef, name: &str) -> ApiError {
        let msg = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again",
            def.qualified()
        );
        ApiError::new(409, "Conflict", msg).about(def, Some(name))
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    pub fn too_old(rv: u64, oldest: u64) -> ApiError {
        ApiError::gone(format!("too old resource version: {rv} ({oldest})"))
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    /// RBAC's refusal, worded as kube-apiserver words it.
    pub fn forbidden(
        user: &str,
        verb: &str,
        def: &ResourceDef,
        sub: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> ApiError {
        let what = match name {
            Some(n) => format!("{} \"{n}\"", def.qualified()),
            None => def.qualified(),
        };
        let resource = match sub {
            Some(s) => format!("{}/{s}", def.plural),
            None => def.plural.to_owned(),
        };
        let scope = match namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let msg = format!(
            "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            def.group
        );
        ApiError::new(403, "Forbidden", msg).about(def, name)
    }

    /// The `Status` object.
    pub fn to_json(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        })
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on an unexpected error")]
mod tests {
    use super::*;
    use crate::fake_apiserver::resources::{def, resolve};

    #[test]
    fn forbidden_reads_like_rbac() {
        let svc = def(resolve("services").unwrap());
        let e = ApiError::forbidden("system:serviceaccount:s:a", "list", svc, None, None, None);
        assert_eq!(
            e.message,
            "services is forbidden: User \"system:serviceaccount:s:a\" cannot list resource \"services\" \
             in API group \"\" at the cluster scope"
        );
        let routes = def(resolve("grpcroutes").unwrap());
        let e = ApiError::forbidden("u", "patch", routes, Some("status"), Some("n"), Some("r"));
        assert_eq!(
            e.message,
            "grpcroutes.gateway.networking.k8s.io \"r\" is forbidden: User \"u\" cannot patch resource \
             \"grpcroutes/status\" in API group \"gateway.networking.k8s.io\" in the namespace \"n\""
        );
        let j = e.to_json();
        assert_eq!(j["code"], 403);
        assert_eq!(j["reason"], "Forbidden");
        assert_eq!(j["details"]["name"], "r");
    }
}
